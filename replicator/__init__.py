"""replicator: keep PostgreSQL in sync with a live SQLite database, then cut over."""

__version__ = "0.1.0"
