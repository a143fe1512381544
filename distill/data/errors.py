"""The one error type of the data package."""

from __future__ import annotations

from students.errors import UserError

__all__ = ["DataError"]


class DataError(UserError):
    """Bad or missing data; the message is one line saying what is wrong and how to fix it."""
