"""Query parity: does the application's query file answer the same on PostgreSQL, and how fast.

``spec`` reads the query file (with ``sqltext`` scanning its SQL and
``params`` typing its example values for each side), ``checker`` runs every
query on both sides and compares the answers.
"""

from replicator.queries.checker import (
    Latency,
    QueryReport,
    QueryResult,
    ResultColumn,
    Row,
    Unconvertible,
    check_queries,
    compare_rows,
    normalise_postgres,
    normalise_sqlite,
    percentile,
    same_value,
)
from replicator.queries.params import side_values
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
