"""Export a checkpoint to ONNX or TorchScript, check the copy against PyTorch, and measure latency.

``distill export CKPT --onnx FILE [--torchscript FILE] [--latency]``. Every export is checked: the exported
model and the PyTorch model run on the same random batch (of a different size than the one traced, so the
dynamic batch axis is exercised too) and the largest absolute difference of the logits must stay below
:data:`PARITY_TOLERANCE` plus :data:`PARITY_RELATIVE` of the largest logit; a file that fails is removed. Output folders are created as needed. Latency is the median over repeated timed
forward passes after warm-up, of eager PyTorch (:func:`measure_latency`) and, for an exported ONNX file, of
onnxruntime on the CPU (:func:`measure_onnx_latency`); every figure names the runtime it timed. When the
checkpoint belongs to a run directory they are recorded in that run's ``summary.json`` under ``"latency"``
(``"cpu"``/``"cuda"``: PyTorch eager; ``"onnxruntime_cpu"``), where ``distill compare`` shows the CPU one.
"""

from __future__ import annotations

import io
import logging
import os
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import teachers
from students.common.errors import UserError
from students.common.files import atomic_write_bytes

from .device import device_name
from .rundir import SUMMARY_FILE, find_checkpoint, update_summary

__all__ = [
    "ExportError",
    "PARITY_TOLERANCE",
    "PARITY_RELATIVE",
    "ONNX_OPSET",
    "Exportable",
    "load_exportable",
    "export_onnx",
    "check_onnx",
    "export_torchscript",
    "check_torchscript",
    "check_output",
    "measure_latency",
    "measure_onnx_latency",
    "run_dir_of",
    "record_latency",
    "require_onnxruntime",
]

_logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-3  # max |logit difference| at logits of order 1; fp32 kernels of two runtimes differ by ~1e-6
# ... plus this fraction of the largest |logit|: an undertrained net's logits reach 1e5, where fp32 rounding alone
# differs by ~1e-2 (an r4_3323 after one epoch: 0.0098 at 1e5, a relative 1e-7, was refused by the absolute bound)
PARITY_RELATIVE = 1e-5
ONNX_OPSET = 17
CHECK_BATCH = 5  # parity batch: a size other than the traced one, to exercise the dynamic batch axis
TRACE_BATCH = 2


class ExportError(UserError):
    """An export that failed or whose output does not match PyTorch's."""


@dataclass(frozen=True)
class Exportable:
    """A checkpoint's model ready to export: eval mode, CPU, and the shape of one input image."""

    model: nn.Module
    input_shape: tuple[int, int, int]  # channels, height, width
    name: str  # the student spec or timm model name


def load_exportable(path: str | Path) -> Exportable:
    """The model of a checkpoint (or of a run directory's best checkpoint), on the CPU in eval mode.

    An ``upsample``-mode teacher is exported with its resize in front, so the exported graph takes the
    same CIFAR-sized images it was trained on.
    """

    ckpt_path = find_checkpoint(path)
    model, ckpt = teachers.load_model(ckpt_path)
    arch = ckpt["arch"]
    recorded = ckpt.get("meta", {}).get("config") or {}
    side = int(arch.get("input_size") or (recorded.get("image_size") if isinstance(recorded, dict) else None) or 32)
    adapter = teachers.arch_adapter(arch)  # the resize an upsample-mode model trained behind, as recorded
    if adapter is not None:
        model = nn.Sequential(adapter, model)
    return Exportable(model.cpu().eval(), (3, side, side), str(arch.get("spec") or arch.get("name") or "model"))


def check_output(path: str | Path, flag: str) -> Path:
    """Fail before any work when ``path`` cannot be written: one :class:`UserError` naming ``flag``.

    A missing folder is fine (the export creates it, as ``--out`` and ``--report`` do) as long as its nearest
    existing ancestor is a writable folder. Nothing is created here.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{flag} {path}: {ancestor} is a file, not a folder; choose another path")
    if not os.access(ancestor, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"{flag} {path} is not writable; choose another path")
    return path


def _make_parent(path: Path, what: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"{what} export: cannot create folder {path.parent} ({err.strerror})") from None


def require_onnxruntime() -> None:
    """:class:`UserError` with the install command when onnxruntime or onnx is missing."""
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"{module} is not installed; pip install {module} (or pip install -e '.[dev]')") from None


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int], *,
                opset: int = ONNX_OPSET) -> Path:
    """Write ``model`` as ONNX with input ``images`` (dynamic batch, float32 N x C x H x W, normalised as in
    training) and output ``logits``. Uses the TorchScript-based exporter (``dynamo=False``): the dynamo
    exporter needs onnxscript, which is not one of our dependencies. Creates ``path``'s folder if needed."""
    path = Path(path)
    _make_parent(path, "ONNX")
    example = torch.randn(TRACE_BATCH, *input_shape)
    buffer = io.BytesIO()  # serialised in memory, then written atomically: a full disk leaves no partial file
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Shape checks in Python (e.g. "resize only when the size differs") are traced as constants; the
            # parity check below is what proves the graph right, so the tracer's warnings are noise here.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                model.eval(), (example,), buffer, dynamo=False, opset_version=opset,
                input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
    except Exception as err:  # the exporter raises many types; one line says what failed
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportError(f"ONNX export failed: {first[:200]}") from None
    return atomic_write_bytes(path, buffer.getbuffer())  # WriteError (one line) on a full or read-only disk


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ExportError(f"exported model returns shape {tuple(a.shape)}, PyTorch {tuple(b.shape)}")
    return float((a.float() - b.float()).abs().max())


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _check(diff: float, what: str, tolerance: float, scale: float = 0.0) -> float:
    """``diff`` when it is within ``tolerance`` plus :data:`PARITY_RELATIVE` of the logits' ``scale``."""
    bound = tolerance + PARITY_RELATIVE * scale
    if not diff <= bound:  # also catches NaN
        raise ExportError(f"{what} output differs from PyTorch by {diff:.3g} (tolerance {bound:.3g}: {tolerance:g} "
                          f"+ {PARITY_RELATIVE:g} x the largest |logit|, {scale:.3g}); the export is not faithful")
    return diff


def _scale(reference: torch.Tensor) -> float:
    return float(reference.float().abs().max()) if reference.numel() else 0.0


def check_onnx(path: str | Path, model: nn.Module, input_shape: tuple[int, int, int], *,
               tolerance: float = PARITY_TOLERANCE, seed: int = 0) -> float:
    """Run the ONNX file in onnxruntime (CPU) and PyTorch on one random batch; the largest absolute logit
    difference, or :class:`ExportError` when it exceeds ``tolerance``."""
    require_onnxruntime()
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ExportError(f"{path} does not load in onnxruntime: {str(err).strip()[:200]}") from None
    x = torch.randn(CHECK_BATCH, *input_shape, generator=torch.Generator().manual_seed(seed))
    (got,) = session.run(["logits"], {"images": x.numpy()})
    reference = _reference(model, x)
    return _check(_max_abs_diff(torch.from_numpy(got), reference), "ONNX", tolerance, _scale(reference))


def export_torchscript(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int]) -> Path:
    """Write ``model`` traced with ``torch.jit.trace`` (loads with ``torch.jit.load``, no Python source).
    Creates ``path``'s folder if needed."""
    path = Path(path)
    _make_parent(path, "TorchScript")
    example = torch.randn(TRACE_BATCH, *input_shape)
    # Serialised in memory: torch.jit.save streaming to a file aborts the whole process (an uncaught C++
    # error) when the disk fills up; the atomic write then fails in one line and leaves no partial file.
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.save is deprecated"
            traced = torch.jit.trace(model.eval(), example, check_trace=False)
            torch.jit.save(traced, buffer)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportError(f"TorchScript export failed: {first[:200]}") from None
    return atomic_write_bytes(path, buffer.getbuffer())  # WriteError (one line) on a full or read-only disk


def check_torchscript(path: str | Path, model: nn.Module, input_shape: tuple[int, int, int], *,
                      tolerance: float = PARITY_TOLERANCE, seed: int = 0) -> float:
    """Reload the TorchScript file and compare it with PyTorch on one random batch (see :func:`check_onnx`)."""
    loaded = torch.jit.load(str(path), map_location="cpu")
    x = torch.randn(CHECK_BATCH, *input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        got = loaded(x)
    reference = _reference(model, x)
    return _check(_max_abs_diff(got, reference), "TorchScript", tolerance, _scale(reference))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, input_shape: tuple[int, int, int], device: torch.device, *,
                    batch_sizes: Sequence[int] = (1, 256), warmup: int = 3, min_repeats: int = 5,
                    max_repeats: int = 50, budget_s: float = 2.0, threads: int | None = None) -> dict[str, Any]:
    """Median milliseconds per forward pass of eager PyTorch (fp32) for each batch size on ``device``.

    Each size gets ``warmup`` untimed passes, then at least ``min_repeats`` timed ones, more (up to
    ``max_repeats``) while the size's ``budget_s`` seconds last. ``threads`` sets torch's CPU threads for the
    measurement only. Returns e.g. ``{"runtime": "pytorch 2.5.1 eager fp32", "batch1_ms": 0.8,
    "batch1_img_s": 1250.0, "batch256_ms": ..., "threads": 2, "device": ..., "repeats": {...}}``.
    """
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            model = model.to(device).eval()
            result: dict[str, Any] = {"device": device_name(device),
                                      "runtime": f"pytorch {torch.__version__} eager fp32"}
            if device.type == "cpu":
                result["threads"] = torch.get_num_threads()

            def make(batch: int) -> torch.Tensor:
                return torch.randn(batch, *input_shape, device=device)

            def forward(x: torch.Tensor) -> None:
                model(x)
                _sync(device)

            return result | _time(forward, make, batch_sizes, warmup, min_repeats, max_repeats, budget_s)
    finally:
        torch.set_num_threads(saved_threads)


def measure_onnx_latency(path: str | Path, input_shape: tuple[int, int, int], *, batch_sizes: Sequence[int] = (1, 256),
                         warmup: int = 3, min_repeats: int = 5, max_repeats: int = 50, budget_s: float = 2.0,
                         threads: int | None = None) -> dict[str, Any]:
    """The same figures as :func:`measure_latency` for an exported ONNX file run by onnxruntime on the CPU
    (``CPUExecutionProvider``, fp32); ``threads`` sets its intra-op threads (default: onnxruntime's own)."""
    require_onnxruntime()
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ExportError(f"{path} does not load in onnxruntime: {str(err).strip()[:200]}") from None
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {"device": device_name(torch.device("cpu")),
                              "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider fp32"}
    if threads is not None:
        result["threads"] = threads

    def make(batch: int) -> Any:
        return rng.standard_normal((batch, *input_shape), dtype=np.float32)

    def forward(x: Any) -> None:
        session.run(["logits"], {"images": x})

    return result | _time(forward, make, batch_sizes, warmup, min_repeats, max_repeats, budget_s)


def _time(forward: Any, make: Any, batch_sizes: Sequence[int], warmup: int, min_repeats: int, max_repeats: int,
          budget_s: float) -> dict[str, Any]:
    """``batch{N}_ms`` (median milliseconds per call of ``forward(make(N))``) and ``batch{N}_img_s`` per size."""
    result: dict[str, Any] = {}
    repeats: dict[str, int] = {}
    for batch in batch_sizes:
        x = make(batch)
        for _ in range(warmup):
            forward(x)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < min_repeats or (len(times) < max_repeats and time.perf_counter() - start < budget_s):
            t0 = time.perf_counter()
            forward(x)
            times.append(time.perf_counter() - t0)
        ms = 1000.0 * statistics.median(times)
        result[f"batch{batch}_ms"] = ms
        result[f"batch{batch}_img_s"] = batch / (ms / 1000.0)
        repeats[f"batch{batch}"] = len(times)
    result["repeats"] = repeats
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return result


def run_dir_of(path: str | Path) -> Path | None:
    """The run directory a checkpoint belongs to (the directory itself, or the file's folder), if any."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    return folder if (folder / SUMMARY_FILE).is_file() else None


def record_latency(run_dir: str | Path, latency: dict[str, Any]) -> Path:
    """Put ``latency`` under ``"latency"`` in the run's ``summary.json``. Figures are per device type:
    measuring on the CPU alone keeps an earlier CUDA measurement."""
    return update_summary(run_dir, "latency", lambda old: {**(old if isinstance(old, dict) else {}), **latency},
                          "the latency was")
