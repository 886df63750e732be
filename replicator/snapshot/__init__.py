"""The initial copy: every table from SQLite into PostgreSQL, resumable at any point.

:mod:`~replicator.snapshot.copy` runs it, table by table or several at once
(:mod:`~replicator.snapshot.parallel`), each key range chunk by chunk
(:mod:`~replicator.snapshot.chunks`), secondary indexes set aside and built
after (:mod:`~replicator.snapshot.indexes`); :mod:`~replicator.snapshot.summary`
shows its progress and result.
"""

from replicator.snapshot.copy import Snapshotter
from replicator.snapshot.summary import ProgressDisplay, SnapshotSummary, TableResult

__all__ = ["ProgressDisplay", "SnapshotSummary", "Snapshotter", "TableResult"]
