"""``python -m recray`` runs the command line."""

from recray.cli.main import entry

entry()
