"""The toolkit's error type: moved to :mod:`students.common.errors`; this path keeps old imports working."""

import sys

from .common import errors as _moved

sys.modules[__name__] = _moved  # the same module object: old imports, isinstance checks and patches all agree
