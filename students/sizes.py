"""Size parsing: moved to :mod:`students.common.sizes`; this path keeps old imports working."""

import sys

from .common import sizes as _moved

sys.modules[__name__] = _moved  # the same module object: old imports, isinstance checks and patches all agree
