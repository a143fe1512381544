"""``python -m students``: the same as the ``students`` command."""

from .cli import entry

entry()
