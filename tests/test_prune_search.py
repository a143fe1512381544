"""The budget search: one dependency graph per prune, every buildable size findable, the per-layer ceiling
under global ranking, messages that name the caller's numbers, and the library on any module."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

import students
from distill.cli import main as distill_main
from prune import PruneError, PruneSettings, channels_last_safe, measure, prune_by_ratio, prune_to_target
from prune.cli import main
from prune.plan import ChannelPlanner
from cli_helpers import invoke

SPEC = "r3_111_c16-32-64"  # 78,042 parameters
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def graph_builds(monkeypatch) -> list[int]:
    """Counts torch-pruning dependency-graph builds."""
    calls: list[int] = []
    original = tp.DependencyGraph.build_dependency

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", counting)
    return calls


@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_one_graph_and_one_importance_pass_per_prune(graph_builds, importance: str) -> None:
    torch.manual_seed(0)
    model = students.create(SPEC)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    gradient_passes: list[int] = []

    def grad_fn(net):
        gradient_passes.append(1)
        nn.functional.cross_entropy(net(x), y).backward()

    phases: list[tuple[str, int, int]] = []
    result = prune_to_target(model, "params", 30_000, PruneSettings(importance=importance, global_pruning=True),
                             grad_fn=grad_fn, progress=lambda *a: phases.append(a))
    assert 30_000 * 0.98 <= result.after <= 30_000
    assert len(graph_builds) == 1
    assert len(gradient_passes) == (1 if importance == "taylor" else 0)
    # progress: one importance pass over the groups, then a handful of search probes (a bisection)
    importance_calls = [p for p in phases if p[0] == "importance"]
    search_calls = [p for p in phases if p[0] == "search"]
    assert importance_calls[-1][1] == importance_calls[-1][2] and len(importance_calls) == importance_calls[-1][2]
    assert 1 <= len(search_calls) <= 2 * 12 + 4  # two bisections (target check + step) over <= 113 channels


def test_iterative_steps_share_one_graph(graph_builds) -> None:
    model = students.create("r3_111_c32-64-128")
    result = prune_to_target(model, "params", 150_000, PruneSettings(iterative_steps=3, global_pruning=True))
    assert len(result.ratios) == 3 and len(graph_builds) == 1


@pytest.mark.parametrize("round_to", [1, 4, 8])
@pytest.mark.parametrize("global_pruning", [False, True])
def test_every_size_reachable_by_ratio_is_reachable_by_target(round_to: int, global_pruning: bool) -> None:
    settings = PruneSettings(global_pruning=global_pruning, round_to=round_to)
    sizes = set()
    for ratio in [i / 20 for i in range(1, 20)]:
        torch.manual_seed(0)  # the same weights, so the same importance ranking, every time
        model = students.create(SPEC)
        prune_by_ratio(model, ratio, settings)
        sizes.add(students.count_params(model))
    sizes.discard(78_042)
    assert sizes
    for size in sorted(sizes):
        torch.manual_seed(0)
        model = students.create(SPEC)
        assert prune_to_target(model, "params", size, settings).after == size


def test_issue_example_20k_with_round_to_8_is_reachable() -> None:
    # Issue 16: "--target-params 20k --round-to 8" was refused while "--ratio 0.5 --round-to 8" gives 19,954.
    model = students.create(SPEC)
    result = prune_to_target(model, "params", 20_000, PruneSettings(round_to=8))
    assert 20_000 * 0.98 <= result.after <= 20_000 and result.after == students.count_params(model)
    assert all(w % 8 == 0 for name, w in model.widths.items())


def test_max_layer_ratio_is_honoured_under_global_ranking() -> None:
    model = students.create(SPEC)
    with pytest.raises(PruneError, match="unreachable with max_layer_ratio=0.9"):
        prune_to_target(model, "params", 1_000, PruneSettings(global_pruning=True))
    assert students.count_params(model) == 78_042  # untouched
    for ceiling in (0.5, 0.9):
        model = students.create(SPEC)
        nominal = model.widths
        prune_by_ratio(model, 0.95, PruneSettings(global_pruning=True, max_layer_ratio=ceiling))
        for name, width in model.widths.items():
            if name != "fc":
                assert width >= nominal[name] * (1 - ceiling) - 1e-9, (name, width, nominal[name])


def test_errors_blame_rounding_or_the_ceiling_and_name_arguments() -> None:
    model = students.create(SPEC)
    smallest_unrounded = 2_000  # r3_111_c16-32-64 at max_layer_ratio 0.9 without rounding: about 1.4k
    with pytest.raises(PruneError) as err:
        prune_to_target(model, "params", smallest_unrounded, PruneSettings(round_to=16))
    text = str(err.value)
    assert "unreachable with round_to=16" in text and "target 2,000 params" in text and "--" not in text
    flags = err.value.render({"round_to": lambda v: f"--round-to {v}", "target": lambda v: "--target-params 2k"})
    assert "--target-params 2k is unreachable with --round-to 16" in flags
    with pytest.raises(PruneError, match=r"max_layer_ratio=0\.5") as err:
        prune_to_target(model, "params", 2_000, PruneSettings(max_layer_ratio=0.5))
    with pytest.raises(PruneError, match="iterative_steps=0 must be at least 1"):
        PruneSettings(iterative_steps=0)
    with pytest.raises(PruneError, match="ratio=1.5"):
        prune_by_ratio(model, 1.5)


@pytest.mark.parametrize("spec", [SPEC, "r4_1111_c8-16-32-64", "r3_222_c16-32-64_k5"])
def test_cost_model_matches_fvcore_and_the_pruned_model(spec: str) -> None:
    import copy

    model = students.create(spec)
    planner = ChannelPlanner(model, torch.zeros(1, 3, 32, 32), ignored_layers=[model.fc], round_to=1,
                             max_layer_ratio=0.9)
    planner.estimate_importance(tp.importance.GroupMagnitudeImportance(p=2))
    assert planner.cost(planner.identity()) == {"params": measure(model, "params"), "macs": measure(model, "macs")}
    for ratio in (0.3, 0.7):
        trial = copy.deepcopy(model)
        trial_planner = ChannelPlanner(trial, torch.zeros(1, 3, 32, 32), ignored_layers=[trial.fc], round_to=1,
                                       max_layer_ratio=0.9)
        trial_planner.estimate_importance(tp.importance.GroupMagnitudeImportance(p=2))
        plan = trial_planner.plan_local(ratio)
        predicted = trial_planner.cost(plan)
        trial_planner.apply(plan)
        assert predicted == {"params": measure(trial, "params"), "macs": measure(trial, "macs")}


class TinyCNN(nn.Module):
    """A custom model with no timm contract: the classifier is found as the last Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                                      nn.Conv2d(24, 48, 3, stride=2, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(48, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_library_prunes_a_custom_cnn() -> None:
    torch.manual_seed(0)
    model = TinyCNN()
    result = prune_to_target(model, "macs", 0.5 * measure(model, "macs"), PruneSettings(global_pruning=True))
    assert result.model is model and result.kind == "macs"
    assert result.macs_after == measure(model, "macs") and result.macs_after <= 0.5 * result.macs_before
    assert result.params_after == students.count_params(model) < result.params_before
    assert model.head.out_features == 7 and result.seconds > 0
    assert set(result.channels) == {"features.0", "features.3"}
    assert all(kept <= before for kept, before in result.channels.values())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_library_prunes_a_timm_model() -> None:
    import timm

    model = timm.create_model("resnet10t", num_classes=10)
    before = students.count_params(model)
    result = prune_to_target(model, "params", before // 2, PruneSettings(round_to=8, global_pruning=True))
    assert before // 2 * 0.98 <= result.after <= before // 2
    assert model.get_classifier().out_features == 10
    assert all(m.out_channels % 8 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_channels_last_safety_follows_widths() -> None:
    model = students.create(SPEC)
    assert channels_last_safe(model, "cpu")
    prune_by_ratio(model, 0.6, PruneSettings(round_to=1))  # widths 6, 12, 25: a 6->12 1x1 stride-2 shortcut
    assert not channels_last_safe(model, "cpu") and channels_last_safe(model, "cuda")
    rounded = students.create("r3_111_c32-64-128")
    prune_by_ratio(rounded, 0.5, PruneSettings(round_to=8))  # widths 16, 32, 64
    assert channels_last_safe(rounded, "cpu")


def test_thin_downsampling_shortcuts_train_in_the_default_format_on_cpu() -> None:
    # A 1x1 stride-2 shortcut from 8 channels segfaults oneDNN in channels-last on some CPUs (odd batches).
    assert not channels_last_safe(students.create("r2_11_c8-16"), "cpu")
    assert channels_last_safe(students.create("r2_11_c8-16"), "cuda")
    assert channels_last_safe(students.create("r3_111_c16-32-64"), "cpu")


PRESET_TRAINING = """
import sys, torch, students
from distill.device import memory_format_for
from prune import channels_last_safe
for spec in sys.argv[1:]:
    torch.manual_seed(0)
    model = students.create(spec)
    fmt = memory_format_for(channels_last_safe(model, "cpu"))
    model = model.to(memory_format=fmt)
    for batch in (25, 3):  # odd batches: where oneDNN's channels-last backward crashed
        x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
        torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (batch,))).backward()
"""


def test_test_sized_students_train_on_cpu_in_the_chosen_format() -> None:
    # On whatever CPU runs the suite, at its default thread count: a crash fails here, not inside a CLI test.
    specs = ["r2_11_c8-16", "r3_111_c8-16-32", "r2_11_c16-32", SPEC]
    done = subprocess.run([sys.executable, "-c", PRESET_TRAINING, *specs], cwd=REPO, timeout=180,
                          capture_output=True, text=True, env=_env())
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


ODD_WIDTH_TRAINING = """
import torch, students
from distill.device import memory_format_for
from prune import PruneSettings, channels_last_safe, prune_by_ratio
torch.manual_seed(0)
model = students.create("r3_111_c16-32-64")
prune_by_ratio(model, 0.6, PruneSettings(round_to=1))   # odd widths: oneDNN channels-last crashes on these
fmt = memory_format_for(channels_last_safe(model, "cpu"))
model = model.to(memory_format=fmt)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(5):
    x = torch.randn(32, 3, 32, 32).contiguous(memory_format=fmt)
    loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (32,)))
    opt.zero_grad(); loss.backward(); opt.step()
assert torch.isfinite(loss)
"""


def test_odd_width_pruned_net_fine_tunes_on_cpu_in_the_chosen_format() -> None:
    # In a subprocess with a time limit: a segfault or hang fails this test instead of killing pytest.
    done = subprocess.run([sys.executable, "-c", ODD_WIDTH_TRAINING], cwd=REPO, timeout=180, capture_output=True,
                          text=True, env={**_env(), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _engine_checks_widths() -> bool:
    return "channels_last_safe" in (REPO / "distill" / "engine.py").read_text()


@pytest.fixture(scope="module")
def source_run(cifar_subset_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prune-search-src") / "src"
    assert distill_main(["run", "--student", SPEC, "--data", str(cifar_subset_dir), "--epochs", "1", "--batch-size",
                         "50", "--device", "cpu", "--out", str(out)]) == 0
    return out


@pytest.mark.xfail(not _engine_checks_widths(), reason="distill/engine.py does not yet call "
                   "prune.channels_last_safe (odd widths crash oneDNN in channels-last)", strict=False)
def test_cli_fine_tunes_odd_widths_on_cpu_without_crashing(source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "odd"
    cmd = [sys.executable, "-m", "prune", str(source_run), "--ratio", "0.6", "--round-to", "1",
           "--finetune-epochs", "1", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, timeout=300, capture_output=True, text=True,
                          env={**_env(), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
    assert json.loads((out / "summary.json").read_text())["complete"]


def test_cli_prune_only_records_time_and_builds_one_graph(capsys, monkeypatch, graph_builds, source_run: Path,
                                                           tmp_path: Path) -> None:
    import prune.cli

    drawn: list[tuple] = []
    original = prune.cli._PruneProgress.__call__
    monkeypatch.setattr(prune.cli._PruneProgress, "__call__",
                        lambda self, *a: (drawn.append(a), original(self, *a))[1])
    out = tmp_path / "only"
    code, stdout, err = invoke(main, capsys, source_run, "--target-params", "20k", "--finetune-epochs", "0",
                               "--out", out)
    assert code == 0, err
    assert len(graph_builds) == 1
    assert sorted(p.name for p in out.iterdir()) == ["prune.json", "pruned.pt"]
    record = json.loads((out / "prune.json").read_text())
    assert record["prune_only"] and record["prune_seconds"] > 0 and record["round_to"] == 8
    assert 19_600 <= record["params_after"] <= 20_000
    assert "pruning took" in stdout and "ratio 0.0000" not in stdout
    assert {phase for phase, _, _ in drawn} == {"importance", "search"}  # the CLI drew both passes
    code, _, err = invoke(main, capsys, "--resume", out)
    assert code == 2 and "nothing to resume" in err


@pytest.mark.parametrize("method", ["group-norm", "bn-scale"])
def test_tracing_leaves_a_training_model_in_training_mode(method: str) -> None:
    """torch-pruning's tracer switches the model to eval mode; a sparsity stage that trained on in it (BatchNorm
    on running statistics) diverged to NaN within 30 steps at lr 0.05."""
    from prune.core import sparsity_regularizer

    model = students.create(SPEC).train()
    hook = sparsity_regularizer(model, method, 5e-4)
    assert model.training
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    hook(model)
    assert model.training
    prune_by_ratio(model, 0.25, PruneSettings(round_to=8))
    assert model.training


def test_cli_sparse_stage_builds_its_regulariser_once(capsys, graph_builds, source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "sparse"
    code, _, err = invoke(main, capsys, source_run, "--ratio", "0.25", "--sparse-epochs", "1", "--finetune-epochs", "0",
                          "--out", out)
    assert code == 0, err
    assert len(graph_builds) == 2  # the regulariser's graph (once, not once per step) and the pruning's
    history = [json.loads(line) for line in (out / "sparse" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train_loss"] < 5 for r in history), history


def test_cli_target_as_a_percentage_of_the_source(capsys, source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "half"
    code, stdout, err = invoke(main, capsys, source_run, "--target-macs", "50%", "--global", "--round-to", "1",
                               "--finetune-epochs", "0", "--out", out)
    assert code == 0, err
    record = json.loads((out / "prune.json").read_text())
    half = record["macs_before"] // 2
    target = record["target"]  # re-measured by fvcore after pruning
    assert (target["kind"], target["value"], target["as_given"], target["measured"]) == (
        "macs", half, "50%", record["macs_after"])
    # within 2% under, or (a gap in the sizes this net can build) the nearest size under it, said in a note
    assert record["macs_after"] <= half and target["missed"] == (record["macs_after"] < 0.98 * half)
    assert (record["note"] is not None) == target["missed"]
    assert f"target macs: 50% ({half:,})" in stdout
    for bad in ("0%", "100%", "half%", "150%"):
        code, _, err = invoke(main, capsys, source_run, "--target-params", bad, "--out", tmp_path / "never")
        assert code == 2 and f"--target-params {bad} is not a percentage between 0 and 100" in err, err
    assert not (tmp_path / "never").exists()


def test_cli_stop_after_zero_and_time_in_summary(capsys, source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "stop0"
    code, stdout, err = invoke(main, capsys, source_run, "--ratio", "0.5", "--finetune-epochs", "1",
                               "--stop-after", "0", "--out", out)
    assert code == 0, err
    assert "after fine-tuning -" in stdout
    code, stdout, err = invoke(main, capsys, "--resume", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["pruned"]["prune_seconds"] > 0


def test_cli_messages_name_the_users_numbers(capsys, source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    code, _, err = invoke(main, capsys, source_run, "--target-params", "2k", "--round-to", "16", "--out", out)
    assert code == 2 and "--target-params 2k is unreachable with --round-to 16" in err, err
    code, _, err = invoke(main, capsys, source_run, "--target-params", "1k", "--global", "--out", out)
    assert code == 2 and "--target-params 1k is unreachable with --max-layer-ratio 0.9" in err, err
    code, _, err = invoke(main, capsys, source_run, "--target-params", "39k", "--global", "--exact", "--out", out)
    assert code == 2 and "--target-params 39k cannot be met within 2%" in err, err
    assert "or drop --exact to take the size below" in err, err
    code, _, err = invoke(main, capsys, source_run, "--ratio", "0.5", "--iterative-steps", "0", "--out", out)
    assert code == 2 and "--iterative-steps 0 must be at least 1" in err, err
    assert not out.exists()


def test_a_target_between_two_sizes_takes_the_lower_and_exact_names_one_that_works(capsys, source_run: Path,
                                                                                     tmp_path: Path) -> None:
    """A budget in a gap of the buildable sizes (rounding, global ranking): the nearest size under it, said in
    a note and recorded; ``--exact`` refuses in one line naming a budget that is met, and that budget is met."""
    args = [source_run, "--target-params", "39k", "--global", "--finetune-epochs", "0"]
    code, stdout, err = invoke(main, capsys, *args, "--out", tmp_path / "lower")
    assert code == 0, err
    record = json.loads((tmp_path / "lower" / "prune.json").read_text())
    assert record["params_after"] < 0.98 * 39_000 and record["note"].startswith("--target-params 39k has no size")
    assert "note: --target-params 39k has no size within 2% under it" in stdout and "target missed" not in stdout
    code, _, err = invoke(main, capsys, *args, "--exact", "--out", tmp_path / "refused")
    working = re.search(r"(--target-params [0-9]+) is met exactly", err).group(1).split()
    assert code == 2 and int(working[1]) == record["params_after"] and not (tmp_path / "refused").exists()
    code, stdout, err = invoke(main, capsys, source_run, *working, "--global", "--exact", "--finetune-epochs", "0",
                               "--out", tmp_path / "working")
    assert code == 0, err
    assert json.loads((tmp_path / "working" / "prune.json").read_text())["params_after"] == int(working[1])


def test_pruned_checkpoint_loads_through_timm(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    model = students.create(SPEC)
    prune_to_target(model, "params", 20_000, PruneSettings(round_to=8))
    model.eval()
    path = students.save_checkpoint(tmp_path / "pruned.pt", model)
    widths = students.load_file(path)["arch"]["widths"]
    loaded = timm.create_model(SPEC, widths=widths, checkpoint_path=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(RuntimeError, match="size mismatch"):  # the spec alone builds the unpruned widths
        timm.create_model(SPEC, checkpoint_path=str(path))
