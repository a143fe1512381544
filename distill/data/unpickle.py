"""The restricted unpickler: the official CIFAR batches are pickles, and only numpy arrays may come out.

``pickle.load`` on an untrusted file runs arbitrary code; :func:`safe_unpickle` resolves only the few
numpy globals an ndarray pickle needs and refuses every other one before anything runs.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable

import numpy as np

from .errors import DataError

__all__ = ["safe_unpickle"]


def _numpy_global(module: str, name: str) -> Callable[[], object]:
    """Resolve a numpy global lazily, preferring numpy 2's ``numpy._core`` over the deprecated ``numpy.core``."""

    def resolve() -> object:
        import importlib

        for candidate in (module.replace("numpy.core", "numpy._core"), module):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"numpy has no {module}.{name}")

    return resolve


# Everything an ndarray pickle needs, and nothing else: the official CIFAR files are pickles, and
# pickle.load on an untrusted file runs arbitrary code.
_ALLOWED_PICKLE_GLOBALS: dict[tuple[str, str], Callable[[], object]] = {
    (module, name): _numpy_global(module, name)
    for core in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{core}.multiarray", "_reconstruct"),
        (f"{core}.multiarray", "scalar"),
        (f"{core}.numeric", "_frombuffer"),
    )
}
_ALLOWED_PICKLE_GLOBALS[("numpy", "ndarray")] = lambda: np.ndarray
_ALLOWED_PICKLE_GLOBALS[("numpy", "dtype")] = lambda: np.dtype


def _latin1_encode(text: str, encoding: str) -> bytes:
    """What Python 3 pickles bytes as below protocol 3 (``_codecs.encode(text, "latin1")``), and only that."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# Python 3 writes bytes (and ndarray buffers) this way at protocol 2, e.g. batches re-pickled by a py3 script.
_ALLOWED_PICKLE_GLOBALS[("_codecs", "encode")] = lambda: _latin1_encode


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays, dicts, lists, bytes and numbers, and refuses any other global."""

    def find_class(self, module: str, name: str) -> object:
        resolve = _ALLOWED_PICKLE_GLOBALS.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only numpy arrays are allowed")
        return resolve()


def safe_unpickle(data: bytes, where: str) -> object:
    """Unpickle CIFAR batch bytes, allowing only numpy arrays; raises DataError otherwise."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as error:  # UnpicklingError, EOFError, ValueError...: all mean a bad file
        raise DataError(
            f"could not read CIFAR batch file {where} ({type(error).__name__}: {error}); "
            f"replace it with a fresh copy of the official files"
        ) from error
