"""Alembic environment for the replicator's own state schema.

Run only through :func:`replicator.state.migrations.migrate`, which passes an open
connection and the state schema name. The version table lives in that schema,
so the application's own ``public.alembic_version`` is never touched.
"""

from alembic import context

config = context.config
connection = config.attributes["connection"]
schema = config.attributes["state_schema"]

context.configure(
    connection=connection,
    version_table="alembic_version",
    version_table_schema=schema,
    transactional_ddl=True,
)

with context.begin_transaction():
    context.run_migrations()
