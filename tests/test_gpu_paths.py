"""GPU day one (issue 32), on the CPU: the CUDA-only paths that can run here do, the GPU script runs in its
check profile, and prune under torchrun writes once and waits for it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import students
import distill.device as device_module
from distill import TrainConfig, fit
from distill.data import load_dataset
from distill.device import configure_kernels, on_cpu, resolve_device
from distill.teacher_cache import CacheEntry, stream_key

from conftest import import_benchmarks

REPO = Path(__file__).resolve().parents[1]
TEACHER, STUDENT = "r2_11_c8-16", "r1_1_c4"


@pytest.fixture(scope="module")
def data(cifar_subset_dir: Path):
    return load_dataset(str(cifar_subset_dir))


def _teacher() -> torch.nn.Module:
    torch.manual_seed(123)
    return students.create(TEACHER, num_classes=10)


def _fit(data, out: Path, **changes):
    torch.manual_seed(5)
    cfg = TrainConfig(**{"epochs": 1, "batch_size": 50, "lr": 0.05, "device": "cpu", "seed": 5, **changes})
    return fit(students.create(STUDENT, num_classes=10), data, teacher=_teacher(), config=cfg, out=out)


@pytest.mark.parametrize("kd_loss", ["kd", "dkd", "dist", "kd+at", "kd+fitnet"])
def test_every_loss_trains_under_bf16_autocast_as_on_cuda(data, tmp_path: Path, monkeypatch, kd_loss: str) -> None:
    """The CUDA path (bf16 autocast for the teacher forward and the student step, losses in fp32) on the CPU."""
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(device_module, "CPU_AUTOCAST", True)
    summary = _fit(data, tmp_path / kd_loss, kd_loss=kd_loss, mixup=0.4)
    records = [json.loads(x) for x in (tmp_path / kd_loss / "metrics.jsonl").read_text().splitlines()]
    assert summary.complete and all(math.isfinite(r["train_loss"]) and math.isfinite(r["test_loss"]) for r in records)


def test_bf16_outputs_are_cached_apart_and_replayed_exactly(data, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    cpu, cfg = resolve_device("cpu"), TrainConfig(batch_size=50)
    fp32_key = CacheEntry(stream_key(cfg, teacher=_teacher(), data=data, device=cpu, teacher_channels_last=True))
    monkeypatch.setattr(device_module, "CPU_AUTOCAST", True)
    bf16_key = CacheEntry(stream_key(cfg, teacher=_teacher(), data=data, device=cpu, teacher_channels_last=True))
    assert fp32_key.digest != bf16_key.digest  # bf16 logits are other numbers: never replayed for fp32 runs
    live = _fit(data, tmp_path / "live", teacher_cache=False, epochs=2)
    _fit(data, tmp_path / "cold", epochs=2)
    warm = _fit(data, tmp_path / "warm", epochs=2)
    assert warm.extra["teacher_outputs"] == {"replayed": 2, "recorded": 0, "live": 0}
    a, b = (torch.load(r.run_dir / "last.pt", weights_only=True)["state_dict"] for r in (live, warm))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_keep_optimizer_state_on_the_cpu(data, tmp_path: Path) -> None:
    nested = {"state": {0: {"momentum_buffer": torch.ones(2, requires_grad=True)}}, "param_groups": [{"lr": 0.1}]}
    moved = on_cpu(nested)
    assert moved["state"][0]["momentum_buffer"].device.type == "cpu" and not moved["state"][0]["momentum_buffer"].requires_grad
    assert moved["param_groups"] == [{"lr": 0.1}]
    run = _fit(data, tmp_path / "run", teacher_cache=False)
    ckpt = torch.load(run.run_dir / "last.pt", weights_only=True, map_location=None)
    tensors = [t for s in ckpt["optimizer"]["state"].values() for t in s.values() if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)


def test_deterministic_is_a_recorded_setting_and_a_no_op_on_the_cpu(data, tmp_path: Path) -> None:
    configure_kernels(resolve_device("cpu"), deterministic=True)
    assert not torch.are_deterministic_algorithms_enabled()
    run = _fit(data, tmp_path / "det", deterministic=True, teacher_cache=False)
    assert TrainConfig.load(run.run_dir / "config.json").deterministic is True


@pytest.mark.slow
def test_the_gpu_script_runs_its_check_profile_and_returns_two_files(cifar_subset_dir: Path, tmp_path: Path) -> None:
    (script,) = import_benchmarks("gpu_day_one")
    out, work = tmp_path / "out", tmp_path / "work"
    # The budget is for the GPU slot; here it must not depend on how loaded the machine is.
    args = ["--profile", "check", "--data", str(cifar_subset_dir), "--out", str(out), "--work", str(work),
            "--budget-s", "3600"]
    code = script.main(args)
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0, [s for s in summary["steps"] if s["status"] != "done"]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_day_one.tar.gz", "summary.json"]
    steps = {s["step"]: s for s in summary["steps"]}
    assert [s["step"] for s in summary["steps"]] == ["throughput", "teacher", "kd-cold", "kd-warm", "alone", "pruned",
                                                     "compare"]
    assert [e["teacher_outputs"] for e in steps["kd-cold"]["epochs"]] == ["recorded"]
    assert [e["teacher_outputs"] for e in steps["kd-warm"]["epochs"]] == ["replayed"]
    with tarfile.open(out / "gpu_day_one.tar.gz") as tar:
        names = tar.getnames()
    assert "compare.md" in names and "throughput.json" in names and "kd-warm/summary.json" in names
    assert not any(n.endswith(".pt") for n in names)
    throughput = json.loads((work / "throughput.json").read_text())
    assert throughput["fit_dataloader_img_s"] > 0 and throughput["distill_img_s"] > 0  # fit's DataLoader path ran
    again = script.main(args)
    assert again == 0  # a second call reuses every finished step
    assert {s["status"] for s in json.loads((out / "summary.json").read_text())["steps"]} <= {"reused", "done"}


def test_the_gpu_profiles_measure_compile_against_the_cold_run(tmp_path: Path) -> None:
    (script,) = import_benchmarks("gpu_day_one")
    for name in ("day-one", "long"):
        steps = {step: cmd for step, cmd, _ in script.steps(script.PROFILES[name], "data.tar.gz", tmp_path)}
        cold, compiled = steps["kd-cold"], steps["kd-compile"]
        assert [a for a in compiled if a not in cold] == ["--compile", str(tmp_path / "kd-compile")]
        assert str(tmp_path / "kd-compile") in steps["compare"]
    assert "kd-compile" not in [step for step, _, _ in script.steps(script.PROFILES["check"], "d", tmp_path)]


@pytest.mark.slow
def test_prune_under_torchrun_prunes_once_and_fine_tunes_on_two_ranks(cifar_subset_dir: Path, tmp_path: Path) -> None:
    from distill.cli import main

    source = tmp_path / "source"
    assert main(["run", "--student", "r2_11_c16-32", "--data", str(cifar_subset_dir), "--epochs", "1", "--batch-size",
                 "50", "--device", "cpu", "--no-tta", "--out", str(source)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "pruned"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "prune", str(source), "--ratio", "0.5", "--round-to", "8", "--finetune-epochs", "1",
                           "--batch-size", "25", "--out", str(out)], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["world_size"] == 2 and summary["pruned"]["channels_removed"] > 0
    assert json.loads((out / "prune.json").read_text())["params_after"] == summary["num_params"]


def test_the_classifier_runs_in_fp32_under_autocast_and_checkpoints_do_not_change(tmp_path: Path) -> None:
    import copy

    from distill.device import FP32Head, keep_head_fp32

    model = students.create(STUDENT, num_classes=10).eval()
    keys = list(model.state_dict())
    assert keep_head_fp32(model) and keep_head_fp32(model)  # idempotent
    assert isinstance(model.fc, FP32Head) and isinstance(model.fc, torch.nn.Linear)
    assert list(model.state_dict()) == keys
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.forward_features(x)
        assert model.fc(model.forward_head(features, pre_logits=True)).dtype == torch.float32
    ema = copy.deepcopy(model)  # timm's ModelEmaV3 copies the model: the copy keeps the fp32 head
    assert isinstance(ema.fc, FP32Head)
    teacher = students.create(TEACHER, num_classes=10)
    from teachers import FrozenTeacher

    frozen = FrozenTeacher(teacher, fold_bn=True)  # the folded torch.fx graph keeps its fc submodule
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert frozen(x).dtype == torch.bfloat16  # without it: logits rounded to bf16
    assert keep_head_fp32(frozen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert frozen(x).dtype == torch.float32


@pytest.mark.parametrize("kd_loss", ["kd", "kd+at", "kd+fitnet"])
def test_compiled_student_with_feature_hooks_and_ema_trains_as_eager(data, tmp_path: Path, monkeypatch,
                                                                     kd_loss: str) -> None:
    """`--compile` with EMA, and with a feature method's forward hooks on the student's stages, on the CPU:
    dynamo traces the student (and, for a logit method, the frozen teacher) and the run's numbers equal the
    eager run's. The ``aot_eager`` backend keeps the test to seconds (inductor's C++ build takes minutes on 2
    cores); the graph capture is the same."""
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    compile_ = torch.compile
    calls = []

    def traced(model, **kwargs):
        calls.append(type(model).__name__)
        return compile_(model, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", traced)
    # Dynamo does not guard on module hooks (torch._dynamo.config.skip_nnmodule_hook_guards): a graph traced
    # for this very architecture without hooks (the kd case, before) would be reused with the hooks left out.
    torch._dynamo.reset()
    runs = {}
    for compiled in (True, False):
        out = tmp_path / f"{kd_loss}-{compiled}"
        summary = _fit(data, out, kd_loss=kd_loss, ema=True, compile=compiled, teacher_cache=False)
        assert summary.complete
        runs[compiled] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(calls) == (2 if kd_loss == "kd" else 1), calls  # the teacher too, unless stage maps are needed
    for key in ("train_loss", "test_loss", "test_top1", "ema_top1"):
        assert [r.get(key) for r in runs[True]] == pytest.approx([r.get(key) for r in runs[False]], rel=1e-5)


def test_loader_batches_are_drawn_one_ahead_in_order() -> None:
    """`fit`'s DataLoader path (distill.batches.OnDevice): batch i + 1 is drawn (on CUDA: pinned and copied
    on a side stream) while the consumer holds batch i; order, values, dtype and memory format unchanged."""
    from distill.batches import OnDevice

    drawn: list[int] = []
    batches = [(torch.full((2, 3, 4, 4), float(i), dtype=torch.float64), torch.tensor([i, i])) for i in range(4)]

    class Loader:
        def __len__(self) -> int:
            return len(batches)

        def __iter__(self):
            for i, batch in enumerate(batches):
                drawn.append(i)
                yield batch

    seen = []
    for images, labels in OnDevice(Loader(), torch.device("cpu"), channels_last=True):
        seen.append((int(labels[0]), len(drawn)))
        assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(images, batches[int(labels[0])][0].float())
    assert seen == [(0, 2), (1, 3), (2, 4), (3, 4)]  # one ahead, none lost at the end
    assert list(OnDevice([], torch.device("cpu"), channels_last=False)) == []


def test_a_compiled_teachers_logits_have_an_entry_of_their_own(data, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, backend="aot_eager", **kw))
    compiled = _fit(data, tmp_path / "compiled", compile=True)
    eager = _fit(data, tmp_path / "eager")
    again = _fit(data, tmp_path / "again", compile=True)
    assert compiled.extra["teacher_outputs"]["recorded"] == 1 and eager.extra["teacher_outputs"]["recorded"] == 1
    assert again.extra["teacher_outputs"] == {"replayed": 1, "recorded": 0, "live": 0}


def test_the_teacher_runs_from_bf16_weights_cast_once_to_the_same_logits(data, monkeypatch) -> None:
    """Under bf16 autocast the frozen teacher's convolution and linear weights are cast once, in a copy;
    its logits and stage maps equal autocast's per-step casts bit for bit, and the caller's teacher stays fp32."""
    from distill.device import keep_head_fp32
    from distill.feature_kd import stage_features
    from distill.teacher_cache import TeacherOutputs

    monkeypatch.setattr(device_module, "CPU_AUTOCAST", True)
    teacher = _teacher().eval().to(memory_format=torch.channels_last)
    keep_head_fp32(teacher)
    images = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    outputs = TeacherOutputs(teacher, device=torch.device("cpu"), amp=True, levels=[1])
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, maps = stage_features(teacher, images, [1])
        cast_once, cast_maps = outputs(images)
    assert logits.dtype == torch.float32 and torch.equal(cast_once, logits) and torch.equal(cast_maps[1], maps[0])
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    assert {p.dtype for p in outputs._runner.parameters()} == {torch.bfloat16, torch.float32}
