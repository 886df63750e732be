"""``python -m replicator.demo.sample``: see :mod:`replicator.demo.sample.cli`."""

import sys

from replicator.demo.sample.cli import main

sys.exit(main())
