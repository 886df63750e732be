"""Query parity: does the application's query file answer the same on PostgreSQL, and how fast.

``spec`` reads the query file (with ``sqltext`` scanning its SQL and
``params`` typing its example values for each side), ``checker`` runs every
query on both sides, ``compare`` decides whether the answers are the same,
``judge`` looks at what values alone miss (``drift``: the Python types the
application receives; ``verdicts``: order, empty answers, the file's
``accept`` and ``[session]``; ``letters``: dead letters behind a
difference), ``latency`` times each parameter set in rounds and ``load``
from concurrent clients, ``plans`` explains a slow one and ``advice`` reads
every plan for indexes and settings to suggest, ``port`` suggests a
PostgreSQL form with sqlglot, and ``report`` holds and renders the results.
"""

from replicator.queries.checker import check_queries
from replicator.queries.compare import (
    ResultColumn,
    Row,
    Unconvertible,
    compare_rows,
    normalise_postgres,
    normalise_sqlite,
    same_value,
)
from replicator.queries.params import side_values
from replicator.queries.report import Latency, QueryReport, QueryResult, percentile
from replicator.queries.spec import load_query_file, parse_sql_file, parse_toml_file
from replicator.queries.sqltext import find_placeholders, has_top_level, to_postgres_placeholders

__all__ = [
    "Latency",
    "QueryReport",
    "QueryResult",
    "ResultColumn",
    "Row",
    "Unconvertible",
    "check_queries",
    "compare_rows",
    "find_placeholders",
    "has_top_level",
    "load_query_file",
    "normalise_postgres",
    "normalise_sqlite",
    "parse_sql_file",
    "parse_toml_file",
    "percentile",
    "same_value",
    "side_values",
    "to_postgres_placeholders",
]
