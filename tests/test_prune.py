"""``prune``: exact budgets on torch-pruning, safe reloads, and the CLI end to end with fine-tuning and resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import students
from distill.cli import main as distill_main
from prune import IMPORTANCES, PruneError, PruneSettings, measure, prune_by_ratio, prune_to_target
from prune.cli import main
from cli_helpers import invoke

SPEC = "r3_111_c16-32-64"  # 78,042 parameters: big enough for 2% budgets, small enough for seconds on a CPU


def _cli(capsys, *args) -> tuple[int, str, str]:
    return invoke(main, capsys, *args)


@pytest.mark.parametrize("kind", ["params", "macs"])
def test_prune_to_target_lands_within_two_percent(kind: str) -> None:
    torch.manual_seed(0)
    model = students.create(SPEC)
    target = 0.5 * measure(model, kind)
    result = prune_to_target(model, kind, target, PruneSettings(global_pruning=True))
    assert result.after == measure(model, kind)
    assert target * 0.98 <= result.after <= target
    # fvcore's and torch-pruning's MAC counts agree on the pruned model too.
    model(torch.randn(2, 3, 32, 32)).sum().backward()  # forward and backward still work
    assert all(p.grad is not None for p in model.parameters())


def test_iterative_steps_and_round_to() -> None:
    model = students.create("r3_111_c32-64-128")
    target = 150_000
    result = prune_to_target(model, "params", target, PruneSettings(iterative_steps=3, round_to=2, global_pruning=True))
    assert len(result.ratios) == 3 and target * 0.98 <= result.after <= target
    assert all(w % 2 == 0 for name, w in model.widths.items() if name != "fc")


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_every_importance_criterion_runs(importance: str) -> None:
    torch.manual_seed(0)
    model = students.create(SPEC)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def grad_fn(net):
        torch.nn.functional.cross_entropy(net(x), y).backward()

    before = students.count_params(model)
    prune_by_ratio(model, 0.3, PruneSettings(importance=importance), grad_fn=grad_fn)
    assert students.count_params(model) < before
    assert model(x).shape == (8, 10)


def test_unreachable_and_oversized_targets() -> None:
    model = students.create(SPEC)
    with pytest.raises(PruneError, match="not below the current"):
        prune_to_target(model, "params", 80_000, PruneSettings())
    with pytest.raises(PruneError, match="unreachable"):
        prune_to_target(model, "params", 2_000, PruneSettings(max_layer_ratio=0.5))
    assert students.count_params(model) == 78_042  # a failed search leaves the model untouched


def test_pruned_student_reloads_identically_in_a_new_process(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = students.create(SPEC)
    prune_to_target(model, "params", 40_000, PruneSettings(global_pruning=True))
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    torch.save(model(x).detach(), tmp_path / "expected.pt")
    students.save_checkpoint(tmp_path / "pruned.pt", model)
    code = (
        "import sys, torch, students\n"
        f"model, _ = students.load_checkpoint(r'{tmp_path / 'pruned.pt'}')\n"
        f"x = torch.load(r'{tmp_path / 'x.pt'}', weights_only=True)\n"
        f"expected = torch.load(r'{tmp_path / 'expected.pt'}', weights_only=True)\n"
        "sys.exit(0 if torch.equal(model(x), expected) else 1)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode == 0


@pytest.fixture(scope="module")
def source_run(cifar_subset_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prune-src") / "src"
    assert distill_main(["run", "--student", SPEC, "--data", str(cifar_subset_dir), "--epochs", "1", "--batch-size",
                         "50", "--device", "cpu", "--out", str(out)]) == 0
    return out


def test_prune_cli_end_to_end_with_resume(capsys, source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    # 37k: reachable with the default --round-to 8 (36,386 params); 39k is not (36,386 or 40,658)
    code, stdout, err = _cli(capsys, source_run, "--target-params", "37k", "--global", "--finetune-epochs", "2",
                             "--out", out, "--stop-after", "1")
    assert code == 0, err
    assert "achieved: " in stdout and "right after pruning" in stdout
    code, stdout, err = _cli(capsys, "--resume", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt", "config.json", "last.pt", "metrics.csv", "metrics.jsonl", "prune.json", "pruned.pt", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["epochs_done"] == 2
    assert 37_000 * 0.98 <= summary["num_params"] <= 37_000
    pruned = summary["pruned"]
    for key in ("top1_before", "top1_after_prune", "top1_after_bn_recalibration", "params_before", "macs_after"):
        assert key in pruned
    assert pruned["params_before"] == 78_042 and pruned["params_after"] == summary["num_params"]
    assert summary["teacher"] == SPEC  # no teacher in the source: the unpruned student teaches
    model, _ = students.load_checkpoint(out / "best.pt")
    assert students.count_params(model) == summary["num_params"]
    # distill eval reads pruned runs like any other.
    data = json.loads((out / "config.json").read_text())["data"]
    assert distill_main(["eval", str(out), "--data", data, "--device", "cpu"]) == 0


def test_sparse_stage_then_ratio(capsys, source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "sparse"
    code, stdout, err = _cli(capsys, source_run, "--ratio", "0.25", "--sparse-epochs", "1", "--finetune-epochs", "1",
                             "--out", out)
    assert code == 0, err
    assert (out / "sparse" / "last.pt").exists() and (out / "summary.json").exists()
    assert json.loads((out / "prune.json").read_text())["sparse_epochs"] == 1


def test_prune_bad_input(capsys, source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    for args, fragment in [
        (["--target-params", "4.9Q"], "not a size"),
        (["--target-params=-1M"], "not a size"),
        (["--target-params", "abc"], "not a size"),
        (["--target-params", "1M"], "not below"),
        (["--target-params", "1k", "--max-layer-ratio", "0.3"], "unreachable"),
        (["--target-params", "10k", "--ratio", "0.5"], "exactly one"),
    ]:
        code, _, err = _cli(capsys, source_run, *args, "--out", out)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, (args, err)
    code, _, err = _cli(capsys, tmp_path / "missing", "--ratio", "0.5", "--out", out)
    assert code == 2 and "does not exist" in err
    teacher = tmp_path / "teacher.pt"
    import teachers

    model = teachers.create_teacher("resnet10t", 10)  # timm models prune too (tests/test_prune_timm.py), not custom
    students.save_checkpoint(teacher, model, arch={"family": "custom", "class": "my.Net", "num_classes": 10})
    code, _, err = _cli(capsys, teacher, "--ratio", "0.5", "--out", out)
    assert code == 2 and "custom module" in err
    assert not out.exists()  # nothing was written
