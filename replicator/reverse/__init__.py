"""The reverse direction: after cutover, PostgreSQL's changes streamed back into SQLite.

``setup`` (capture triggers in, out, and status), ``apply`` (a batch into
SQLite with its position), ``position`` (kept in the SQLite file), ``daemon``
(the loop). The value conversion is replicator/plan/reverse.py and
replicator/coerce/reverse.py; the change table is replicator/state/reverse.py.
"""
