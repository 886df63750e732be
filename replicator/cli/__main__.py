"""``python -m replicator.cli``: the ``replicator`` command without its installed script."""

from replicator.cli import main

# Named as the installed script is, not after this file, in usage lines and errors.
main(prog_name="replicator")
