"""The CLIs' console: moved to :mod:`students.common.console`; this path keeps old imports working."""

import sys

from .common import console as _moved

sys.modules[__name__] = _moved  # the same module object: old imports, isinstance checks and patches all agree
