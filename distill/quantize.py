"""An int8 ONNX model of a run, by onnxruntime's static quantization, measured on the run's own images.

``distill quantize RUN``: the run's checkpoint (``best.pt``) is exported to fp32 ONNX and checked against
PyTorch (:mod:`distill.export`), pre-processed (onnxruntime's ``quant_pre_process``: shape inference and
graph fusions), and quantized with ``quantize_static`` in QDQ format with per-channel int8 weights,
calibrated on ``calibration`` training images of the run (picked by ``seed``, unaugmented, normalised as in
training). Then both files classify the run's own test images in onnxruntime, and both are timed at batch
1, 64 and 256 (median of repeats, threads stated). Everything lands in the run's ``summary.json`` under
``"int8"``, where ``distill compare`` shows it; the int8 file is written only when its top-1 is within
``max_drop`` points of the fp32 file's, else :class:`QuantizeError` says the measured drop and what to try.

Why a command of its own rather than ``distill export --int8``: export works on any checkpoint and needs no
data, while quantization calibrates on the run's training images and is judged on its test images.

The integer scheme (:data:`SCHEMES`) matters more than anything else on a CPU. Measured on this project's
78k KD student on an AVX2 CPU without VNNI (docs/RESULTS.md): signed 8-bit activations (``s8s8``,
onnxruntime's default) ran 1.6-2.3x *slower* than fp32 there; unsigned activations with full 8-bit weights
(``u8s8``) ran faster but lost 5.8 points to the known saturation of AVX2's ``vpmaddubsw``; with 7-bit
weights (``u8s8-7bit``, onnxruntime's ``reduce_range``) it lost 0.3 point and ran about 1.3x faster. CPUs with
VNNI have no saturation and run ``s8s8`` fast. ``auto`` picks ``s8s8`` where this CPU has VNNI and
``u8s8-7bit`` elsewhere; the scheme and the reason are recorded. An int8 file is tuned to the kind of CPU
that will run it: quantize where (or for where) it is deployed.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import platform
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from students.common.errors import UserError
from students.common.files import atomic_write_bytes

if TYPE_CHECKING:  # torch and the data stack load when a quantization runs: the CLI's --help reads the defaults
    import torch

    from .config import TrainConfig
    from .data import ImageDataset


__all__ = [
    "QuantizeError",
    "SCHEMES",
    "METHODS",
    "DEFAULT_CALIBRATION",
    "DEFAULT_MAX_DROP",
    "LATENCY_BATCHES",
    "QuantizeSettings",
    "cpu_has_vnni",
    "cpu_name",
    "paired_latency",
    "resolve_scheme",
    "quantize_run",
    "onnx_top1",
    "record_int8",
]

_logger = logging.getLogger(__name__)

SCHEMES = ("auto", "s8s8", "u8s8", "u8s8-7bit")  # activations / weights; 7bit: onnxruntime's reduce_range
METHODS = ("minmax", "entropy", "percentile")  # onnxruntime's CalibrationMethod
DEFAULT_CALIBRATION = 512  # training images
DEFAULT_MAX_DROP = 1.0  # points of top-1 the int8 model may lose against the fp32 ONNX file
LATENCY_BATCHES = (1, 64, 256)
EVAL_BATCH = 500  # images per onnxruntime call when classifying the test set
CALIBRATION_BATCH = 64

ProgressFn = Callable[[str, int, int], None]  # (what, done, total)


class QuantizeError(UserError):
    """A model onnxruntime cannot quantize, or an int8 model that loses too much top-1."""


@dataclass(frozen=True)
class QuantizeSettings:
    """How :func:`quantize_run` quantizes and measures; every value is checked before any work."""

    calibration: int = DEFAULT_CALIBRATION  # training images
    method: str = "minmax"  # calibration: activation ranges from min/max, an entropy fit or a percentile
    scheme: str = "auto"  # see SCHEMES and the module docstring
    seed: int = 0  # picks the calibration images
    max_drop: float = DEFAULT_MAX_DROP  # points
    threads: int | None = None  # onnxruntime intra-op threads for evaluation and latency (None: its default)
    latency_batches: tuple[int, ...] = LATENCY_BATCHES
    test_subset: int | None = None  # None: all of the run's test images

    def __post_init__(self) -> None:
        if not isinstance(self.calibration, int) or self.calibration < 1:
            raise UserError(f"--calibration must be at least 1 image, got {self.calibration}")
        if self.method not in METHODS:
            raise UserError(f"--method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.scheme not in SCHEMES:
            raise UserError(f"--scheme {self.scheme!r} is not one of {', '.join(SCHEMES)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"--seed must be 0 or more, got {self.seed}")
        if not (isinstance(self.max_drop, (int, float)) and 0.0 <= self.max_drop <= 100.0):
            raise UserError(f"--max-drop must be between 0 and 100 points, got {self.max_drop}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if not self.latency_batches or any(b < 1 for b in self.latency_batches):
            raise UserError(f"latency batch sizes must be at least 1, got {list(self.latency_batches)}")
        if self.test_subset is not None and self.test_subset < 1:
            raise UserError(f"--test-subset must be at least 1, got {self.test_subset}")


def cpu_has_vnni() -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX512-VNNI or AVX-VNNI; Linux's cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def cpu_name() -> str:
    """This CPU's model name (Linux's cpuinfo, else the platform's) and its logical cores."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"cpu ({name}, {os.cpu_count()} logical cores)"


def resolve_scheme(scheme: str) -> tuple[str, str]:
    """The scheme ``auto`` stands for on this CPU (or ``scheme`` itself), and why."""
    if scheme != "auto":
        return scheme, "asked for"
    if cpu_has_vnni():
        return "s8s8", "auto: this CPU has VNNI"
    return "u8s8-7bit", "auto: this CPU has no VNNI (s8s8 runs slowly and u8s8 saturates without it)"


def _ort_options(threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: its warnings are about graph rewrites it did itself
    return options


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), _ort_options(threads), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise QuantizeError(f"{path} does not load in onnxruntime: {str(err).strip()[:200]}") from None


def _batches(images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
             batch_size: int) -> Iterator[tuple[Any, Any]]:
    """Normalised, unaugmented float32 NCHW numpy batches (the exported model's input) and their labels."""
    import torch

    from .data import DeviceLoader

    loader = DeviceLoader(images, labels, batch_size=batch_size, mean=tuple(mean), std=tuple(std), train=False,
                          device=torch.device("cpu"))
    for x, y in loader:
        yield x.contiguous().numpy(), y.numpy()


def onnx_top1(path: str | Path, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
              std: Sequence[float], *, threads: int | None = None, progress: ProgressFn | None = None,
              what: str = "") -> float:
    """Top-1 (percent) of the ONNX file ``path`` on ``images`` (uint8 NHWC or NCHW, as the dataset holds them)."""
    session = _session(Path(path), threads)
    correct = seen = 0
    total = int(labels.numel())
    for x, y in _batches(images, labels, mean, std, EVAL_BATCH):
        (logits,) = session.run(["logits"], {"images": x})
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if progress is not None:
            progress(what or f"classifying with {Path(path).name}", seen, total)
    return 100.0 * correct / max(seen, 1)


class _Calibration:
    """onnxruntime's ``CalibrationDataReader``: the chosen training images, batch by batch."""

    def __init__(self, batches: list[Any]) -> None:
        self._batches = batches
        self._iter = iter(batches)

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self._iter, None)
        return None if batch is None else {"images": batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def _calibration_reader(data: ImageDataset, count: int, seed: int, mean: Sequence[float],
                        std: Sequence[float]) -> Any:
    import torch
    from onnxruntime.quantization import CalibrationDataReader

    n = int(data.train_labels.numel())
    picked = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(count, n)]
    batches = [x for x, _ in _batches(data.train_images[picked], data.train_labels[picked], mean, std,
                                      CALIBRATION_BATCH)]
    reader = type("CalibrationReader", (_Calibration, CalibrationDataReader), {})(batches)
    return reader


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantization tools print histograms and log INFO lines (on the root logger): not ours."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        logging.disable(previous)


def _quantize_file(fp32: Path, out: Path, reader: Any, method: str, scheme: str, work: Path) -> bool:
    """Write the int8 QDQ file; True when onnxruntime's pre-processing could be applied first."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, preprocessed = fp32, False
    prepared = work / "prepared.onnx"
    try:
        with _quiet():
            quant_pre_process(str(fp32), str(prepared))
        source, preprocessed = prepared, True
    except Exception as err:  # a graph its symbolic shape inference cannot follow: quantize the file as exported
        _logger.warning("onnxruntime's pre-processing failed (%s); quantizing the exported graph as it is",
                        str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    activations = QuantType.QInt8 if scheme == "s8s8" else QuantType.QUInt8
    try:
        with _quiet():
            quantize_static(str(source), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=scheme == "u8s8-7bit", activation_type=activations,
                            weight_type=QuantType.QInt8, calibrate_method=methods[method])
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise QuantizeError(f"onnxruntime could not quantize this model: {first[:200]}; the fp32 export "
                            "(distill export --onnx) still works") from None
    return preprocessed


def _run_config(ckpt: dict[str, Any], path: Path) -> TrainConfig:
    from .config import TrainConfig

    recorded = ckpt.get("meta", {}).get("config")
    if not isinstance(recorded, dict):
        raise UserError(f"{path} records no run settings, so its training and test images are unknown; "
                        "quantize a run folder written by distill run, teacher, sweep or prune")
    return TrainConfig.from_dict(recorded)


def paired_latency(fp32: str | Path, int8: str | Path, input_shape: tuple[int, int, int], *,
                   batch_sizes: Sequence[int] = LATENCY_BATCHES, threads: int | None = None, warmup: int = 3,
                   min_calls: int = 6, max_calls: int = 100, budget_s: float = 1.5,
                   progress: ProgressFn | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Median milliseconds per call of two ONNX files in onnxruntime on the CPU, per batch size.

    The files are timed in four passes, fp32, int8, int8, fp32, each pass a fresh session alone in the
    process: a steady drift of the machine's speed while measuring (a shared 2-core VM drifts by 10-20% within
    seconds) falls on both alike, and no idle session's spinning worker threads take the cores from the one
    being timed (two live sessions timed in turn measured fp32 at batch 64 as 22 ms instead of 12 here).
    Each pass gives a size ``warmup`` untimed calls, then ``min_calls`` to ``max_calls`` timed ones within
    ``budget_s`` seconds. Per file, the figures :func:`distill.export.measure_onnx_latency` gives.
    """
    import statistics
    import time

    import numpy as np
    import onnxruntime as ort

    inputs = {b: np.random.default_rng(b).standard_normal((b, *input_shape), dtype=np.float32) for b in batch_sizes}
    times: dict[int, dict[int, list[float]]] = {0: {b: [] for b in batch_sizes}, 1: {b: [] for b in batch_sizes}}
    for step, which in enumerate((0, 1, 1, 0)):
        session = _session(Path((fp32, int8)[which]), threads)
        for batch, x in inputs.items():
            for _ in range(warmup):
                session.run(["logits"], {"images": x})
            calls: list[float] = []
            start = time.perf_counter()
            while len(calls) < min_calls or (len(calls) < max_calls and time.perf_counter() - start < budget_s):
                t0 = time.perf_counter()
                session.run(["logits"], {"images": x})
                calls.append(time.perf_counter() - t0)
            times[which][batch].extend(calls)
        del session
        if progress is not None:
            progress("timing fp32 and int8 (passes)", step + 1, 4)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results = []
    for which, kind in enumerate(("fp32", "int8")):
        result: dict[str, Any] = {"device": cpu_name(),
                                  "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider {kind}",
                                  "threads": threads or "onnxruntime default",
                                  "timing": "passes fp32, int8, int8, fp32; median of all timed calls",
                                  "repeats": {f"batch{b}": len(times[which][b]) for b in batch_sizes},
                                  "measured_at": stamp}
        for batch in batch_sizes:
            ms = 1000.0 * statistics.median(times[which][batch])
            result[f"batch{batch}_ms"], result[f"batch{batch}_img_s"] = ms, batch / (ms / 1000.0)
        results.append(result)
    return results[0], results[1]


def _speedups(fp32: dict[str, Any], int8: dict[str, Any], batches: Sequence[int]) -> dict[str, float]:
    return {f"batch{b}": fp32[f"batch{b}_ms"] / int8[f"batch{b}_ms"] for b in batches}


def _quantize_and_measure(item: Any, data: ImageDataset, mean: tuple, std: tuple, settings: QuantizeSettings,
                          scheme: str, progress: ProgressFn | None) -> tuple[bytes, dict[str, Any]]:
    """In a temporary folder: the fp32 export (parity checked), the int8 file, both top-1s (a drop above
    ``settings.max_drop`` is a :class:`QuantizeError`), both latencies. The int8 file's bytes and the figures."""
    from . import export

    with tempfile.TemporaryDirectory(prefix="distill-int8-") as tmp:
        work = Path(tmp)
        fp32 = export.export_onnx(item.model, work / "model.fp32.onnx", item.input_shape)
        parity = export.check_onnx(fp32, item.model, item.input_shape)
        reader = _calibration_reader(data, settings.calibration, settings.seed, mean, std)
        int8 = work / "model.int8.onnx"
        preprocessed = _quantize_file(fp32, int8, reader, settings.method, scheme, work)
        tests = (data.test_images, data.test_labels, mean, std)
        top1_fp32 = onnx_top1(fp32, *tests, threads=settings.threads, progress=progress, what="fp32 ONNX top-1")
        top1_int8 = onnx_top1(int8, *tests, threads=settings.threads, progress=progress, what="int8 ONNX top-1")
        drop = top1_fp32 - top1_int8
        if drop > settings.max_drop:
            raise QuantizeError(
                f"int8 loses {drop:.2f} points of top-1 ({top1_fp32:.2f}% fp32 -> {top1_int8:.2f}% int8 on "
                f"{int(data.test_labels.numel())} test images), above --max-drop {settings.max_drop:g}; nothing "
                f"written. Try --method entropy, more --calibration images"
                + (", or --scheme u8s8-7bit" if scheme != "u8s8-7bit" else ""))
        lat_fp32, lat_int8 = paired_latency(fp32, int8, item.input_shape, batch_sizes=settings.latency_batches,
                                            threads=settings.threads, progress=progress)
        figures = {"fp32_size_bytes": fp32.stat().st_size, "preprocessed": preprocessed, "top1_fp32": top1_fp32,
                   "top1_int8": top1_int8, "drop_points": drop, "parity_fp32_onnx_vs_pytorch": parity,
                   "latency": {"fp32": lat_fp32, "int8": lat_int8},
                   "speedup": _speedups(lat_fp32, lat_int8, settings.latency_batches)}
        return int8.read_bytes(), figures


def quantize_run(run: str | Path, settings: QuantizeSettings | None = None, *, out: str | Path | None = None,
                 load_data: Callable[[TrainConfig], ImageDataset] | None = None,
                 progress: ProgressFn | None = None, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Quantize run ``run`` to int8 ONNX, measure it against its fp32 export, record and return the figures.

    ``out`` is the int8 file (default ``RUN/model.int8.onnx``). ``load_data`` gives the run's data from its
    settings (default :func:`distill.pipeline.load_data`, which picks exactly the images the run used).
    """
    from students.checkpoint import INTEGRITY_KEY, load_file

    from . import export
    from .rundir import SUMMARY_FILE, find_checkpoint

    settings = settings or QuantizeSettings()
    export.require_onnxruntime()
    say = say or _logger.info
    run = Path(run)
    if not (run / SUMMARY_FILE).is_file():
        raise UserError(f"{run} is not a finished run folder (no {SUMMARY_FILE}); quantize a folder written by "
                        "distill run, teacher, sweep or prune")
    target = Path(out) if out is not None else run / "model.int8.onnx"
    export.check_output(target, "--out")
    ckpt_path = find_checkpoint(run)
    item = export.load_exportable(ckpt_path)
    ckpt = load_file(ckpt_path)  # weights-only, its seal checked
    cfg = _run_config(ckpt, ckpt_path)
    scheme, why = resolve_scheme(settings.scheme)
    say(f"quantizing {ckpt_path} ({item.name}) to int8: {settings.calibration} calibration images "
        f"({settings.method}, seed {settings.seed}), scheme {scheme} ({why})")
    if load_data is None:
        from .pipeline import load_data
    data = load_data(cfg)
    if settings.test_subset:
        data = data.subset(test=settings.test_subset)
    meta = ckpt.get("meta", {})
    mean, std = tuple(meta.get("data_mean", data.mean)), tuple(meta.get("data_std", data.std))
    blob, figures = _quantize_and_measure(item, data, mean, std, settings, scheme, progress)
    written = atomic_write_bytes(target, blob)
    import onnxruntime as ort

    record = {
        "file": str(written.resolve()),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size_bytes": len(blob),
        "checkpoint": str(ckpt_path.resolve()),
        "checkpoint_sha256": (ckpt.get(INTEGRITY_KEY) or {}).get("sha256"),
        "format": "QDQ, per-channel weights",
        "scheme": scheme,
        "scheme_reason": why,
        "activations": "int8" if scheme == "s8s8" else "uint8",
        "weights": "int8 (7-bit range)" if scheme == "u8s8-7bit" else "int8",
        "calibration": {"images": min(settings.calibration, int(data.train_labels.numel())),
                        "method": settings.method, "seed": settings.seed,
                        "source": f"training images of {data.source}, unaugmented, normalised as in training"},
        "eval_set": f"test set ({int(data.test_labels.numel())} images)",
        **figures,
        "top1_unit": "percent",
        "max_drop": settings.max_drop,
        "threads": settings.threads,
        "onnxruntime": ort.__version__,
        "cpu": cpu_name(),
        "vnni": cpu_has_vnni(),
        "measured_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    record_int8(run, record)
    return record


def record_int8(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Put ``record`` under ``"int8"`` in the run's ``summary.json`` (atomically)."""
    from .rundir import update_summary

    return update_summary(run_dir, "int8", lambda old: record, "the int8 figures were")
