"""``python -m prune``: the same as the ``prune`` command."""

from .cli import entry

entry()
