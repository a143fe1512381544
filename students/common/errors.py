"""The one exception type that means "the user asked for something we cannot do"."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Bad input: a malformed spec, missing data, a corrupt checkpoint, an impossible budget.

    The message is one line saying what is wrong and how to fix it; the command-line tools print it and
    exit with status 2 instead of showing a traceback.
    """

    exit_code = 2
