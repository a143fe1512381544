"""Checkpoints: an architecture description, a ``state_dict`` and metadata, safe to load and checked for damage.

Files are written atomically (serialised in memory, written to a temporary file in the same folder, fsync,
``os.replace``), so a crash or a full disk never leaves a half-written or empty checkpoint behind, and read
with ``torch.load(..., weights_only=True)``, so a file a user hands us can never execute code. Each
checkpoint records a SHA-256 of its content (every tensor's dtype, shape and bytes and every other value, in
a fixed order) under ``"integrity"``; :func:`load_file` recomputes it, so a checkpoint with flipped bytes is
refused instead of trained on. A student is rebuilt from its spec plus the recorded width of every
convolution, which is how a pruned student comes back.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cost import check_spec_cost
from .common.files import WriteError, atomic_write_bytes, atomic_write_text
from .errors import UserError
from .model import CifarResNet
from .spec import parse_spec

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "WriteError",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "content_digest",
    "load_file",
    "load_state_into",
    "student_arch",
    "save_checkpoint",
    "load_checkpoint",
    "build_student",
]

CHECKPOINT_FORMAT = "distill-checkpoint/1"
INTEGRITY_KEY = "integrity"  # {"scheme": INTEGRITY_SCHEME, "sha256": hex digest of everything else}
INTEGRITY_SCHEME = "sha256-content/1"

_logger = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, truncated, damaged or not of the expected kind."""


# Writing: atomic, in students.common.files (the toolkit's base layer); re-exported here.


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    A checkpoint dict (``"format": CHECKPOINT_FORMAT``) is sealed with its content hash on the way. The
    object is serialised in memory first, so a failing write surfaces as the ``OSError`` the disk raised
    (``torch.save`` streaming to a file reports it as an opaque ``RuntimeError``).
    """
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        obj = _seal(obj)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getbuffer())


# --------------------------------------------------------------------------------------------- integrity


def _key_order(key: Any) -> tuple[str, str]:
    return type(key).__name__, repr(key)


def _feed(h: "hashlib._Hash", obj: Any) -> None:
    """Feed ``obj`` into ``h`` unambiguously: a type tag, a length or shape, then the content."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            flat = t.cpu().contiguous().reshape(-1).resolve_conj().resolve_neg()
            h.update(flat.view(torch.uint8).numpy())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}|".encode())
        for key in sorted(obj, key=_key_order):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):  # torch.Size too; lists and tuples hash alike
        h.update(f"L{len(obj)}|".encode())
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(f"S{len(data)}|".encode() + data)
    elif isinstance(obj, (bytes, bytearray)):
        h.update(f"B{len(obj)}|".encode() + bytes(obj))
    else:  # None, bool, int, float (repr round-trips exactly), dtype, device, ...
        text = f"{type(obj).__qualname__}:{obj!r}".encode()
        h.update(f"V{len(text)}|".encode() + text)


def content_digest(obj: Any) -> str:
    """SHA-256 (hex) of a checkpoint's content: every tensor's dtype, shape and bytes, every other value.

    Independent of how ``torch.save`` lays the file out, so it is checked on the object ``torch.load``
    returns: any flipped byte in tensor data changes it, any flipped byte elsewhere either changes it or
    makes the file unreadable.
    """
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _seal(obj: Mapping[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in obj.items() if k != INTEGRITY_KEY}
    return {**body, INTEGRITY_KEY: {"scheme": INTEGRITY_SCHEME, "sha256": content_digest(body)}}


def _verify(obj: dict[str, Any], path: Path) -> None:
    """Check (and remove) the recorded content hash; old checkpoints without one load with a warning."""
    record = obj.pop(INTEGRITY_KEY, None)
    if record is None:
        _logger.warning(
            "checkpoint %s has no content hash (written by an older version), so it cannot be checked for damage",
            path,
        )
        return
    if not isinstance(record, dict) or record.get("scheme") != INTEGRITY_SCHEME:
        scheme = record.get("scheme") if isinstance(record, dict) else record
        raise CheckpointError(
            f"checkpoint {path} uses an unknown integrity scheme {str(scheme)[:40]!r} "
            f"(expected {INTEGRITY_SCHEME!r}); was it written by a newer version?"
        )
    if content_digest(obj) != record.get("sha256"):
        raise CheckpointError(
            f"checkpoint {path} is damaged: its content does not match the SHA-256 recorded when it was written "
            "(changed on disk or in transfer); restore it from a copy or use another checkpoint"
        )


# --------------------------------------------------------------------------------------------- reading


def load_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read one of our checkpoint files with ``weights_only=True``; :class:`CheckpointError` if unusable."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated, corrupt or unsafe files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or not a safe weights-only file ({first[:160]})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a distill checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
            "pass a file written by `distill run`, `distill teacher` or `prune`"
        )
    _verify(obj, path)
    return obj


def _describe(model_or_arch: Any) -> str:
    if isinstance(model_or_arch, Mapping):
        return str(model_or_arch.get("spec") or model_or_arch.get("name") or model_or_arch.get("family") or "unknown")
    spec = getattr(model_or_arch, "spec_name", None)
    cfg = getattr(model_or_arch, "pretrained_cfg", None) or {}
    return str(spec or cfg.get("architecture") or type(model_or_arch).__name__)


def _shape(value: Any) -> str:
    return "x".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def load_state_into(
    target: nn.Module | torch.optim.Optimizer, ckpt: Mapping[str, Any], path: str | Path, key: str = "state_dict"
) -> None:
    """Load ``ckpt[key]`` (read from ``path``) into a model or optimizer; :class:`CheckpointError` if it does not fit.

    Weights from another architecture (missing or unexpected tensors, other shapes) give one line naming
    ``path``, both architectures and the first difference, instead of PyTorch's multi-line traceback.
    """
    state = ckpt.get(key)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {path} has no {key!r}; pass a checkpoint written by distill or prune")
    if isinstance(target, torch.optim.Optimizer):
        try:
            target.load_state_dict(state)  # type: ignore[arg-type]
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(
                f"optimizer state in {path} does not fit this run's optimizer ({first[:160]}); "
                "was the checkpoint written by another run?"
            ) from None
        return
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and _shape(own[k]) != _shape(state[k])]
    if missing or unexpected or reshaped:
        if reshaped:
            first = f"{reshaped[0]} is {_shape(state[reshaped[0]])} there, {_shape(own[reshaped[0]])} here"
        elif missing:
            first = f"{missing[0]} is missing"
        else:
            first = f"{unexpected[0]} is unexpected"
        theirs = _describe(ckpt.get("arch") or {})
        raise CheckpointError(
            f"checkpoint {path} holds weights of another architecture ({theirs}) than this model "
            f"({_describe(target)}): {len(missing)} tensors missing, {len(unexpected)} unexpected, "
            f"{len(reshaped)} of another shape (first: {first}); pass a checkpoint of the same model"
        )
    try:
        target.load_state_dict(state)  # type: ignore[arg-type]
    except (RuntimeError, ValueError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"weights in {path} do not fit this model: {first[:200]}") from None


def student_arch(model: CifarResNet) -> dict[str, Any]:
    """The architecture description of a student: spec, classes and every convolution's width."""
    return {
        "family": "student",
        "spec": model.spec_name,
        "num_classes": model.num_classes,
        "drop_rate": model.drop_rate,
        "widths": model.widths,
    }


def build_student(arch: Mapping[str, Any]) -> CifarResNet:
    """Rebuild an (untrained) student from :func:`student_arch`'s description."""
    if arch.get("family") != "student":
        raise CheckpointError(f"not a student architecture: family {arch.get('family')!r}")
    try:
        spec = parse_spec(arch["spec"])
        num_classes = int(arch["num_classes"])
        widths = arch.get("widths")
        if widths is not None and not (
            isinstance(widths, Mapping)
            and all(isinstance(k, str) and type(v) is int and v >= 1 for k, v in widths.items())
        ):
            raise TypeError("widths must map convolution names to positive whole numbers")
        # Counted before building: a damaged or hostile width cannot make us allocate gigabytes.
        check_spec_cost(spec, num_classes, widths=widths)
        return CifarResNet(spec, num_classes=num_classes, drop_rate=arch.get("drop_rate"), widths=widths)
    except (KeyError, TypeError, ValueError) as err:  # SpecError and CostError are ValueErrors (UserError)
        raise CheckpointError(f"student architecture in checkpoint is invalid: {err}") from None


def save_checkpoint(
    path: str | Path,
    model: nn.Module | Mapping[str, torch.Tensor],
    *,
    arch: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write ``model``'s weights (a module, or a state dict already taken) with its architecture
    (``student_arch`` for students) and metadata.

    ``extra`` holds further weights-only-safe state (optimizer, schedule, EMA, RNG) for resuming.
    """
    if arch is None:
        if not isinstance(model, CifarResNet):
            raise TypeError("pass arch= for models that are not students")
        arch = student_arch(model)
    weights = model if isinstance(model, Mapping) else model.state_dict()
    state = {k: v.detach().cpu() for k, v in weights.items()}
    obj = {"format": CHECKPOINT_FORMAT, "arch": dict(arch), "state_dict": state, "meta": dict(meta or {}), **extra}
    return atomic_save(obj, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CifarResNet, dict[str, Any]]:
    """Load a student checkpoint: returns the rebuilt model (eval mode) and the whole checkpoint dict."""
    ckpt = load_file(path, map_location)
    if not isinstance(ckpt.get("arch"), Mapping):
        raise CheckpointError(f"{path} has no architecture description; pass a file written by distill or prune")
    model = build_student(ckpt["arch"])
    load_state_into(model, ckpt, path)
    model.eval()
    return model, ckpt
