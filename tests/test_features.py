"""timm's feature contract for students, and feature distillation (FitNets hints, attention transfer).

The contract checks mirror timm's own tests (tests/test_models.py: ``test_model_forward_features`` and
``test_model_forward_intermediates``): every level's channels equal ``feature_info``'s ``num_chs``, its
spatial size is ``ceil(input / reduction)``, and the final map of ``forward_intermediates`` is
``forward_features``'s. The losses are checked against hand computations written out in float64.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
from timm.models import FeatureInfo
from torch import nn

import students
import teachers
from distill.feature_kd import (
    AttentionLoss,
    FeatureAPIError,
    FeatureKD,
    HintLoss,
    build_feature_kd,
    feature_kd_names,
    is_feature_method,
    match_levels,
    probe_levels,
    split_method,
    stage_features,
)
from distill.losses import KDLoss
from students.errors import UserError

SIZE = 32
SPECS = ["r2_11_c8-16", "r3_121_c8-16-16_f355_k3_s4_mp", "r6_111111_c4-4-8-8-16-16", "r1_2_c8", *students.PRESETS]


def _check_levels(info: FeatureInfo, outputs: list[torch.Tensor], batch: int) -> None:
    channels, reductions = info.channels(), info.reduction()
    assert len(outputs) == len(channels)
    for c, r, o in zip(channels, reductions, outputs):
        assert o.shape[0] == batch and o.shape[1] == c
        assert o.shape[-2:] == (math.ceil(SIZE / r), math.ceil(SIZE / r))  # timm allows +1; ours are exact
        assert torch.isfinite(o).all()


# ---------------------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", SPECS)
def test_features_only_every_level_matches_feature_info(name: str) -> None:
    model = timm.create_model(name, features_only=True)
    model.eval()
    levels = len(students.resolve(name).blocks) + 1  # the stem and every stage
    assert len(model.feature_info.channels()) == levels
    with torch.no_grad():
        _check_levels(model.feature_info, model(torch.randn(1, 3, SIZE, SIZE)), batch=1)


@pytest.mark.parametrize("feature_cls", ["list", "getter", "hook"])
def test_features_only_out_indices_and_feature_classes(feature_cls: str) -> None:
    name = "r3_121_c8-16-16_f355_k3_s4_mp"
    x = torch.randn(2, 3, SIZE, SIZE)
    full = students.create(name).eval()
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True, out_indices=(1, -1), feature_cls=feature_cls).eval()
    assert model.feature_info.channels() == [8, 16] and model.feature_info.reduction() == [2, 8]
    full.load_state_dict(_model_state(model), strict=False)
    with torch.no_grad():
        out = model(x)
        _check_levels(model.feature_info, out, batch=2)
        expected = full.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    for o, e in zip(out, expected):
        torch.testing.assert_close(o, e)


def _model_state(wrapper: nn.Module) -> dict[str, torch.Tensor]:
    """A features_only wrapper's weights under the plain model's names (FeatureListNet flattens ``stages``)."""
    inner = getattr(wrapper, "model", None)
    if isinstance(inner, students.CifarResNet):
        return inner.state_dict()
    return {k.replace("stages_", "stages.", 1): v for k, v in wrapper.state_dict().items()}


@pytest.mark.parametrize("name", ["r2_11_c8-16", "seed004", "r3_121_c8-16-16_f355_k3_s4_mp"])
def test_forward_intermediates_matches_forward(name: str) -> None:
    model = timm.create_model(name, num_classes=7).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        _check_levels(info, intermediates, batch=2)
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(model.forward_head(final), model(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two[0], intermediates[-2])
        torch.testing.assert_close(last_two[1], intermediates[-1])
        early, some = model.forward_intermediates(x, indices=[0, 1], stop_early=True)
        torch.testing.assert_close(early, intermediates[1])
        assert len(some) == 2
    with pytest.raises(ValueError, match="indices"):
        model.forward_intermediates(x, indices=[len(model.feature_info)])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_prune_intermediate_layers_keeps_the_levels_it_returns() -> None:
    model = students.create("r3_111_c8-16-32").eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
    assert model.prune_intermediate_layers([0, 2]) == [0, 2]
    assert len(model.stages) == 2 and len(model.feature_info) == 3
    assert model.num_features == 16 and model.num_classes == 0
    with torch.no_grad():
        got = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[2])


def test_pruned_student_reports_its_real_widths() -> None:
    """feature_info reads the live modules: right after in-place pruning and after rebuilding from widths."""
    import torch_pruning as tp

    model = students.create("r2_12_c8-16")
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 3, SIZE, SIZE))
    graph.get_pruning_group(model.stages[1][0].conv2, tp.prune_conv_out_channels, idxs=[0, 5]).prune()
    assert [d["num_chs"] for d in model.feature_info] == [8, 8, 14]
    rebuilt = timm.create_model("r2_12_c8-16", widths=model.widths, features_only=True).eval()
    assert rebuilt.feature_info.channels() == [8, 8, 14]
    with torch.no_grad():
        _check_levels(rebuilt.feature_info, rebuilt(torch.randn(2, 3, SIZE, SIZE)), batch=2)


# ------------------------------------------------------------------------------- losses, by the formulas


def _maps(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def ref_attention(s: torch.Tensor, t: torch.Tensor, p: float) -> float:
    """mean over samples and positions of (a_s - a_t)^2, a = vec(mean_c |f|^p) / its L2 norm; larger map pooled."""
    def q(f: torch.Tensor) -> torch.Tensor:
        return (f.abs() ** p).sum(dim=1) / f.shape[1]  # N x H x W

    qs, qt = q(s), q(t)
    if qs.shape[-1] > qt.shape[-1]:  # average each k x k block of the larger map
        k = qs.shape[-1] // qt.shape[-1]
        qs = qs.reshape(qs.shape[0], qt.shape[1], k, qt.shape[2], k).mean(dim=(2, 4))
    total, count = 0.0, 0
    for n in range(s.shape[0]):
        a_s = qs[n].flatten() / math.sqrt(float((qs[n] ** 2).sum()))
        a_t = qt[n].flatten() / math.sqrt(float((qt[n] ** 2).sum()))
        total += float(((a_s - a_t) ** 2).sum())
        count += a_s.numel()
    return total / count


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_attention_loss_matches_the_formula(p: float) -> None:
    s1, t1 = _maps(3, 4, 4, 4, seed=1), _maps(3, 6, 4, 4, seed=2)
    s2, t2 = _maps(3, 5, 4, 4, seed=3), _maps(3, 7, 2, 2, seed=4)  # different sizes: student map pooled
    got = AttentionLoss(p=p)([s1.float(), s2.float()], [t1.float(), t2.float()])
    expected = ref_attention(s1, t1, p) + ref_attention(s2, t2, p)  # summed over levels
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    same = AttentionLoss()([t1.float()], [t1.float() * 3])  # attention is scale-free
    assert same.item() == pytest.approx(0.0, abs=1e-7)


def test_hint_loss_matches_the_formula() -> None:
    s1, t1 = _maps(4, 3, 4, 4, seed=5), _maps(4, 5, 2, 2, seed=6)  # student map larger: pooled after regressing
    s2, t2 = _maps(4, 2, 2, 2, seed=7), _maps(4, 3, 2, 2, seed=8)
    loss = HintLoss([3, 2], [5, 3]).double()
    with torch.no_grad():
        for proj, seed in zip(loss.projections, (9, 10)):
            proj[0].weight.copy_(_maps(*proj[0].weight.shape, seed=seed))
            proj[1].weight.copy_(_maps(proj[1].num_features, seed=seed + 10))
            proj[1].bias.copy_(_maps(proj[1].num_features, seed=seed + 20))
    got = loss([s1, s2], [t1, t2])  # training mode: BatchNorm normalises with the batch's statistics

    def ref(s: torch.Tensor, t: torch.Tensor, proj: nn.Sequential) -> float:
        w = proj[0].weight.detach()[:, :, 0, 0]  # C_t x C_s
        y = torch.einsum("ts,nshw->nthw", w, s)
        mean = y.mean(dim=(0, 2, 3), keepdim=True)
        var = ((y - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)  # biased, as BatchNorm in training
        y = (y - mean) / torch.sqrt(var + proj[1].eps)
        y = y * proj[1].weight.detach().view(1, -1, 1, 1) + proj[1].bias.detach().view(1, -1, 1, 1)
        if y.shape[-1] != t.shape[-1]:
            k = y.shape[-1] // t.shape[-1]
            y = y.reshape(*y.shape[:2], t.shape[-2], k, t.shape[-1], k).mean(dim=(3, 5))
        return float(((y - t) ** 2).mean())

    expected = (ref(s1, t1, loss.projections[0]) + ref(s2, t2, loss.projections[1])) / 2  # mean over levels
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_feature_kd_adds_the_weighted_feature_term_to_the_logit_loss() -> None:
    student, teacher = students.create("r2_11_c4-8"), students.create("r2_11_c8-16")
    logit = KDLoss(temperature=4.0, kd_weight=0.9)
    kd = FeatureKD(student, teacher, AttentionLoss(), [(1, 1), (2, 2)], logit_loss=logit, feat_weight=10.0)
    g = torch.Generator().manual_seed(0)
    s_logits, t_logits = torch.randn(3, 10, generator=g), torch.randn(3, 10, generator=g)
    labels = torch.tensor([1, 2, 3])
    s_feats = [torch.randn(3, 4, 32, 32, generator=g), torch.randn(3, 8, 16, 16, generator=g)]
    t_feats = [torch.randn(3, 8, 32, 32, generator=g), torch.randn(3, 16, 16, 16, generator=g)]
    parts = kd(s_logits, t_logits, labels, student_feats=s_feats, teacher_feats=t_feats)
    assert set(parts) == {"loss", "ce", "kd", "feat"}
    expected_logit = logit(s_logits, t_logits, labels)
    feat = AttentionLoss()(s_feats, t_feats)
    assert parts["feat"].item() == pytest.approx(feat.item())
    assert parts["loss"].item() == pytest.approx(expected_logit["loss"].item() + 10.0 * feat.item(), rel=1e-6)
    assert kd.temperature == 4.0 and kd.kd_weight == 0.9 and kd.name == "kd+at"
    no_teacher = kd(s_logits, None, labels)  # no-teacher baselines: cross-entropy only, as the logit losses
    assert set(no_teacher) == {"loss", "ce"}
    assert list(kd.state_dict()) == [] and list(kd.parameters()) == []  # networks referenced, not registered


# ---------------------------------------------------------------------------- teachers, a whole KD step


@pytest.fixture(scope="module")
def timm_teacher() -> teachers.FrozenTeacher:
    torch.manual_seed(0)
    return teachers.FrozenTeacher(teachers.create_teacher("resnet10t", 10, mode="cifar"))


def test_hooked_teacher_features_equal_timm_forward_intermediates(timm_teacher) -> None:
    x = torch.randn(2, 3, SIZE, SIZE)
    logits, feats = stage_features(timm_teacher, x)
    with torch.no_grad():
        final, expected = timm_teacher.model.forward_intermediates(x)
        torch.testing.assert_close(logits, timm_teacher.model.forward_head(final))
    assert len(feats) == len(expected) == 5
    for f, e in zip(feats, expected):
        torch.testing.assert_close(f, e)
        assert not f.is_inference() and not f.requires_grad


def test_levels_pair_by_resolution_and_skip_stems(timm_teacher) -> None:
    student = students.create("r3_111_c8-16-32")
    t_levels, s_levels = probe_levels(timm_teacher), probe_levels(student, role="student")
    # cifar mode: resnet10t keeps 32x32 through layer1 although its feature_info says reduction 4
    assert [lv["shape"][1] for lv in t_levels] == [32, 32, 16, 8, 4]
    assert match_levels(s_levels, t_levels) == [(1, 1), (2, 2), (3, 3)]
    pooled = students.create("r2_11_c8-16_mp")  # 16x16 then 8x8
    assert match_levels(probe_levels(pooled, role="student"), t_levels) == [(1, 2), (2, 3)]


@pytest.mark.parametrize("method", ["at", "fitnet", "kd+at", "dist+fitnet"])
def test_kd_step_trains_student_and_projections_never_the_teacher(timm_teacher, method: str) -> None:
    torch.manual_seed(0)
    student = students.create("r3_111_c4-8-16")
    student.train()
    before = {k: v.clone() for k, v in timm_teacher.state_dict().items()}
    loss_fn = build_feature_kd(method, student, timm_teacher)
    x, labels = torch.randn(4, 3, SIZE, SIZE), torch.randint(0, 10, (4,))
    with loss_fn.capture():
        teacher_logits = timm_teacher(x)
        logits = student(x)
        parts = loss_fn(logits, teacher_logits, labels)
    assert {"loss", "ce", "feat"} <= set(parts) and torch.isfinite(parts["loss"])
    assert ("kd" in parts) == ("+" in method)
    params = list(student.parameters()) + list(loss_fn.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    parts["loss"].backward()
    missing = [n for n, p in [*student.named_parameters(), *loss_fn.named_parameters()]
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"
    assert (len(list(loss_fn.parameters())) > 0) == ("fitnet" in method)
    assert all(p.grad is None and not p.requires_grad for p in timm_teacher.parameters())
    optimizer.step()
    assert all(torch.equal(v, timm_teacher.state_dict()[k]) for k, v in before.items())
    hooks = [m for m in [*student.modules(), *timm_teacher.modules()] if m._forward_hooks]
    assert not hooks, "capture() must remove its hooks"


def test_student_teacher_and_wrapped_student() -> None:
    """A student spec as teacher; the student behind the engine's (adapter, model) wrapper."""
    teacher = teachers.FrozenTeacher(students.create("r3_111_c8-16-32"))
    student = students.create("r3_111_c4-8-16")
    wrapped = nn.Sequential(nn.Identity(), student)
    loss_fn = build_feature_kd("kd+fitnet", wrapped, teacher)
    assert loss_fn.pairs == [(1, 1), (2, 2), (3, 3)]
    x, labels = torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 1])
    with loss_fn.capture():
        parts = loss_fn(wrapped(x), teacher(x), labels)
    parts["loss"].backward()
    assert all(p.grad is not None for p in student.parameters())
    with pytest.raises(RuntimeError, match="capture"):
        loss_fn(student(x), teacher(x), labels)  # outside capture() there are no features


# ------------------------------------------------------------------------------------------ bad input


def test_teacher_without_feature_api_gets_one_line_naming_those_that_have_one() -> None:
    student = students.create("r2_11_c4-8")
    folded = teachers.FrozenTeacher(students.create("r2_11_c8-16"), fold_bn=True)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    for teacher, why in ((folded, "fold_bn=False"), (plain, "no feature_info")):
        with pytest.raises(FeatureAPIError) as err:
            build_feature_kd("at", student, teacher)
        message = str(err.value)
        assert "\n" not in message and why in message
        for name in ("resnet18", "seed004", "cifar mode", "kd"):
            assert name in message
        assert isinstance(err.value, UserError)


def test_method_names() -> None:
    assert split_method("at") == (None, "at") and split_method("dkd+fitnet") == ("dkd", "fitnet")
    assert is_feature_method("kd+at") and not is_feature_method("kd")
    assert "kd+at" in feature_kd_names()
    with pytest.raises(UserError, match="did you mean"):
        split_method("kd+att")
    with pytest.raises(UserError, match="choose one of"):
        split_method("ce+at")


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # same student, teacher and regressors on every rank
    student, teacher = students.create("r2_11_c4-8"), teachers.FrozenTeacher(students.create("r2_11_c8-16"))
    loss_fn = build_feature_kd("fitnet", student, teacher)
    torch.manual_seed(1 + rank)  # a different batch on each rank
    x, labels = torch.randn(2, 3, SIZE, SIZE), torch.randint(0, 10, (2,))
    with loss_fn.capture():
        parts = loss_fn(student(x), teacher(x), labels)
    parts["loss"].backward()
    local = [p.grad.clone() for p in loss_fn.parameters()]
    loss_fn.average_gradients()
    torch.save({"local": local, "averaged": [p.grad for p in loss_fn.parameters()]}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_regressor_gradients_are_averaged_over_ranks(tmp_path) -> None:
    """The FitNets regressors are outside DDP: average_gradients() gives every rank the mean gradient."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.allclose(r0["local"][0], r1["local"][0])
    for a, b, l0, l1 in zip(r0["averaged"], r1["averaged"], r0["local"], r1["local"]):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, (l0 + l1) / 2)


# ------------------------------------------------------------------------------ wired into the engine and CLI


def test_config_accepts_every_feature_method_and_checks_feat_weight() -> None:
    from distill.config import FEATURE_KD_NAMES, LOGIT_KD_LOSSES, ConfigError, TrainConfig
    from distill.losses import KD_LOSSES

    assert set(FEATURE_KD_NAMES) == set(feature_kd_names()) and set(LOGIT_KD_LOSSES) == set(KD_LOSSES)
    for name in feature_kd_names():
        assert TrainConfig(kd_loss=name).kd_loss == name
    assert TrainConfig(kd_loss="kd+at", feat_weight=50.0).feat_weight == 50.0
    with pytest.raises(ConfigError, match="feature method"):
        TrainConfig(kd_loss="kd", feat_weight=1.0)
    with pytest.raises(ConfigError, match="feature method"):
        TrainConfig(kd_loss="at", feat_weight=-1.0)


def test_fit_with_a_teacher_without_feature_api_gets_one_line(cifar_subset_dir, tmp_path) -> None:
    from distill import TrainConfig, fit
    from distill.data import load_dataset

    data = load_dataset(str(cifar_subset_dir))
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(FeatureAPIError) as err:
        fit(students.create("r1_1_c4"), data, teacher=plain, out=tmp_path / "x",
            config=TrainConfig(kd_loss="kd+at", epochs=1, batch_size=100, device="cpu"))
    assert "\n" not in str(err.value) and "resnet18" in str(err.value) and "no feature_info" in str(err.value)
    assert not (tmp_path / "x").exists()  # nothing was written


FEAT_TEACHER, FEAT_STUDENT = "r2_11_c8-16", "r1_1_c8"
FEAT_COMMON = ["--batch-size", "50", "--lr", "0.05", "--device", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def feat_teacher_run(cifar_subset_dir, tmp_path_factory):
    from distill.cli import main

    out = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(["teacher", "--teacher", FEAT_TEACHER, "--data", str(cifar_subset_dir), "--epochs", "1",
                 *FEAT_COMMON, "--out", str(out)]) == 0
    return out


def test_cli_run_with_feature_kd_then_resume_exactly(capsys, cifar_subset_dir, feat_teacher_run, tmp_path) -> None:
    """`distill run --kd-loss kd+at` end to end; kd+fitnet stopped after one epoch and resumed equals one run."""
    import json

    from distill.cli import main

    def run(*args) -> None:
        code = main([str(a) for a in args])
        assert code == 0, capsys.readouterr().err

    base = ["run", "--teacher", FEAT_TEACHER, "--teacher-ckpt", feat_teacher_run, "--student", FEAT_STUDENT,
            "--data", cifar_subset_dir, *FEAT_COMMON]
    run(*base, "--epochs", "1", "--kd-loss", "kd+at", "--out", tmp_path / "at")
    records = [json.loads(x) for x in (tmp_path / "at" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["train_feat"] > 0 and records[0]["train_kd"] > 0
    summary = json.loads((tmp_path / "at" / "summary.json").read_text())
    assert summary["complete"] and summary["kd"]["loss"] == "kd+at" and summary["kd"]["feat_weight"] == 1000.0

    fitnet = [*base, "--epochs", "2", "--kd-loss", "kd+fitnet", "--feat-weight", "10", "--mixup", "0.4"]
    run(*fitnet, "--out", tmp_path / "whole")
    run(*fitnet, "--out", tmp_path / "split", "--stop-after", "1")
    run("run", "--resume", tmp_path / "split")
    whole, split = (torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("whole", "split"))
    assert whole["loss_state_dict"] and any("projections" in k for k in whole["loss_state_dict"])
    for key in ("state_dict", "loss_state_dict"):
        for name, value in whole[key].items():
            torch.testing.assert_close(value, split[key][name], rtol=1e-5, atol=1e-6, msg=f"{key} {name}")
    # The optimiser steps the regressors too: per level a 1x1 conv weight and a BatchNorm weight and bias.
    def num_optimised(ckpt) -> int:
        return sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"])

    levels = sum(k.endswith("0.weight") for k in whole["loss_state_dict"])
    at_ckpt = torch.load(tmp_path / "at" / "last.pt", weights_only=True)
    assert levels >= 1 and num_optimised(whole) == num_optimised(at_ckpt) + 3 * levels
    ma, mb = ([json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
              for n in ("whole", "split"))
    for a, b in zip(ma, mb):
        assert a["train_feat"] == pytest.approx(b["train_feat"], rel=1e-5)
        assert a["test_top1"] == pytest.approx(b["test_top1"])
