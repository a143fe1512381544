"""``prune`` on timm models: pruned widths recorded safely, rebuilt exactly, and the CLI end to end.

timm's ``test_resnet`` (374k parameters) and ``test_efficientnet`` (depthwise convolutions, squeeze-excite)
build in milliseconds in cifar mode; no weights are downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import students
import teachers
from cli_helpers import assert_one_line_error, invoke
from distill.cli import main as distill_main
from prune import PruneError, PruneSettings, prune_by_ratio
from prune.cli import main as prune_main

NAME = "test_resnet"


def _randomise_bn(model: nn.Module) -> None:
    """Move BatchNorm statistics away from their initial values, so a reload has to restore them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)


def _pruned(name: str) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = teachers.create_teacher(name, 10, mode="cifar").eval()
    _randomise_bn(model)
    prune_by_ratio(model, 0.5, PruneSettings(global_pruning=True, round_to=4))
    return model.eval(), teachers.teacher_arch(name, 10, "cifar")


@pytest.mark.parametrize("name", [NAME, "test_efficientnet"])
def test_pruned_timm_model_reloads_with_identical_outputs(tmp_path: Path, name: str) -> None:
    model, arch = _pruned(name)
    pruned = teachers.pruned_arch(model, arch)
    layers = pruned[teachers.PRUNED_LAYERS_KEY]
    assert layers and all(isinstance(v, (int, str, list)) for rec in layers.values() for v in rec.values())
    if name == "test_efficientnet":  # depthwise convolutions keep groups == channels
        assert any(r["type"] == "Conv2d" and r["groups"] == r["out_channels"] > 1 for r in layers.values())
    path = students.save_checkpoint(tmp_path / "pruned.pt", model, arch=pruned)
    # Names and whole numbers only: the file loads with weights_only=True (no pickled module).
    assert torch.load(path, weights_only=True)["arch"][teachers.PRUNED_LAYERS_KEY] == layers
    loaded, _ = teachers.load_model(path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert students.count_params(loaded) == students.count_params(model)
    # timm's width attributes follow the pruned layers, so a new head fits (pruning leaves them stale).
    width = loaded.get_classifier().in_features
    assert loaded.num_features == loaded.head_hidden_size == width < model.num_features
    loaded.reset_classifier(5)
    with torch.no_grad():
        assert loaded(x).shape == (3, 5)
    assert teachers.sync_head_width(model).num_features == width  # the same for the model pruned in memory
    # An unpruned timm model records no widths: its architecture is the plain teacher_arch.
    assert teachers.pruned_arch(teachers.create_teacher(name, 10, mode="cifar"), arch) == arch


@pytest.mark.filterwarnings("ignore:Unwrapped parameters")  # torch-pruning on ConvNeXt's layer scale
def test_layer_that_cannot_be_recorded_is_refused() -> None:
    model, arch = _pruned("test_convnext")  # ConvNeXt's per-channel layer scale is a bare Parameter
    with pytest.raises(teachers.PrunedModelError, match=r"stages\.0\.blocks\.0\.gamma of layer stages\.0\.blocks\.0 "
                                                        r"\(ConvNeXtBlock\) changed shape"):
        teachers.pruned_arch(model, arch)


def test_damaged_widths_are_refused(tmp_path: Path) -> None:
    model, arch = _pruned(NAME)
    pruned = teachers.pruned_arch(model, arch)
    layer, record = next(iter(pruned[teachers.PRUNED_LAYERS_KEY].items()))
    for change, fragment in [
        ({"out_channels": 10**6}, "invalid out_channels"),  # wider than the unpruned layer: never allocated
        ({"out_channels": "8"}, "invalid out_channels"),
        ({"type": "Linear"}, "does not match"),
    ]:
        bad = {**pruned, teachers.PRUNED_LAYERS_KEY: {layer: {**record, **change}}}
        path = students.save_checkpoint(tmp_path / "bad.pt", model, arch=bad)  # a consistent content hash
        with pytest.raises(students.CheckpointError, match=fragment):
            teachers.load_model(path)
    bad = {**pruned, teachers.PRUNED_LAYERS_KEY: {"nowhere.conv": record}}
    with pytest.raises(students.CheckpointError, match="not a layer of the rebuilt model"):
        teachers.build_from_arch(bad)


def test_model_that_cannot_be_traced_is_a_prune_error() -> None:
    broken = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 5 * 5, 10))  # not for 32x32 inputs
    with pytest.raises(PruneError, match=r"Sequential cannot be traced for pruning on an input of shape "
                                         r"\(1, 3, 32, 32\) \(RuntimeError: mat1 and mat2"):
        prune_by_ratio(broken, 0.5)


# ------------------------------------------------------------------------------------------ the CLI, end to end


@pytest.fixture(scope="module")
def teacher_run(cifar_subset_dir: Path, tmp_path_factory) -> Path:
    """A 1-epoch ``distill teacher`` run of timm's test_resnet (cifar mode) on 300 real CIFAR-10 images."""
    out = tmp_path_factory.mktemp("timm-src") / "teacher"
    assert distill_main(["teacher", "--teacher", NAME, "--data", str(cifar_subset_dir), "--epochs", "1",
                         "--batch-size", "50", "--device", "cpu", "--out", str(out)]) == 0
    return out


def test_prune_timm_run_fine_tunes_resumes_and_evaluates(capsys, teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    before = students.count_params(teachers.load_model(teacher_run / "best.pt")[0])
    target = before // 2
    code, stdout, err = invoke(prune_main, capsys, teacher_run, "--target-params", target, "--global", "--round-to",
                               "1", "--finetune-epochs", "2", "--stop-after", "1", "--out", out)
    assert code == 0, err
    assert "achieved: " in stdout and f"{NAME} pruned" in stdout
    code, _, err = invoke(prune_main, capsys, "--resume", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["epochs_done"] == 2
    assert target * 0.98 <= summary["num_params"] <= target
    assert summary["teacher"] == NAME  # the unpruned timm model teaches its pruned copy
    assert summary["pruned"]["params_before"] == before
    best, ckpt = teachers.load_model(out / "best.pt")
    assert ckpt["arch"]["family"] == "timm" and ckpt["arch"][teachers.PRUNED_LAYERS_KEY]
    assert students.count_params(best) == summary["num_params"]
    data = json.loads((out / "config.json").read_text())["data"]
    code, stdout, err = invoke(distill_main, capsys, "eval", out, "--data", data, "--device", "cpu")
    assert code == 0, err
    assert "top-1" in stdout


def test_sparse_stage_then_prune_only_reloads_exactly(capsys, teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "only"
    code, _, err = invoke(prune_main, capsys, teacher_run / "best.pt", "--ratio", "0.5", "--sparse-epochs", "1",
                          "--finetune-epochs", "0", "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["prune.json", "pruned.pt", "source.pt", "sparse"]
    assert json.loads((out / "sparse" / "summary.json").read_text())["model"] == NAME
    record = json.loads((out / "prune.json").read_text())
    model, ckpt = teachers.load_model(out / "pruned.pt")
    assert students.count_params(model) == record["params_after"] < record["params_before"]
    # The reloaded model scores exactly what the in-memory pruned model scored after BN recalibration.
    subset = json.loads((teacher_run / "config.json").read_text())["data"]
    code, stdout, err = invoke(distill_main, capsys, "eval", out / "pruned.pt", "--data", subset, "--device", "cpu")
    assert code == 0, err
    assert f"top-1 {record['top1_after_bn_recalibration']:.2f}%" in stdout
    assert ckpt["meta"]["top1"] == record["top1_after_bn_recalibration"]


def test_prune_upsample_mode_timm_model(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    """An upsample-mode model is pruned, recalibrated and fine-tuned at its native side (160 pixels here)."""
    torch.manual_seed(0)
    arch = teachers.teacher_arch(NAME, 10, "upsample")
    source = students.save_checkpoint(
        tmp_path / "upsample.pt", teachers.create_teacher(NAME, 10, mode="upsample"), arch=arch,
        meta={"config": {"data": str(cifar_subset_dir), "device": "cpu", "batch_size": 100, "train_subset": 100}})
    out = tmp_path / "pruned"
    code, stdout, err = invoke(prune_main, capsys, source, "--ratio", "0.5", "--importance", "taylor",
                               "--finetune-epochs", "1", "--out", out)
    assert code == 0, err
    record = json.loads((out / "prune.json").read_text())
    assert record["cost_before"]["input_size"] == [3, arch["resize_to"], arch["resize_to"]] and arch["resize_to"] > 32
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["num_params"] == record["params_after"]
    model, ckpt = teachers.load_model(out / "best.pt")
    assert ckpt["arch"]["mode"] == "upsample" and ckpt["arch"][teachers.PRUNED_LAYERS_KEY]
    code, _, err = invoke(distill_main, capsys, "eval", out, "--data", cifar_subset_dir, "--device", "cpu")
    assert code == 0, err


@pytest.mark.filterwarnings("ignore:Unwrapped parameters")
def test_prune_refuses_models_it_cannot_rebuild(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    custom = students.save_checkpoint(tmp_path / "custom.pt", nn.Linear(3, 10),
                                      arch={"family": "custom", "class": "my.Net", "num_classes": 10})
    code, _, err = invoke(prune_main, capsys, custom, "--ratio", "0.5", "--out", out)
    assert_one_line_error(code, err, "custom module")
    convnext = students.save_checkpoint(tmp_path / "convnext.pt", teachers.create_teacher("test_convnext", 10),
                                        arch=teachers.teacher_arch("test_convnext", 10, "cifar"),
                                        meta={"config": {"data": str(cifar_subset_dir), "device": "cpu"}})
    code, _, err = invoke(prune_main, capsys, convnext, "--ratio", "0.5", "--finetune-epochs", "0", "--out", out)
    assert_one_line_error(code, err, "(ConvNeXtBlock) changed shape")
    assert not out.exists()  # nothing was written
