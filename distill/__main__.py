"""``python -m distill``: the same as the ``distill`` command."""

from .cli import entry

entry()
