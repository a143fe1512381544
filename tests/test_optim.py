"""Learning-rate schedules and optimiser parameter groups."""

from __future__ import annotations

import pytest
import torch

import students
from distill.config import ConfigError, TrainConfig
from distill.optim import build_optimizer, lr_at, param_groups


def _lrs(cfg: TrainConfig, steps_per_epoch: int = 10) -> list[float]:
    return [lr_at(cfg, s, steps_per_epoch) for s in range(cfg.epochs * steps_per_epoch)]


def test_cosine_with_warmup() -> None:
    lrs = _lrs(TrainConfig(epochs=10, lr=0.1, schedule="cosine", warmup_epochs=1))
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)  # linear warm-up over 10 steps
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then non-increasing
    assert lrs[-1] < 0.001


def test_sgdr_restarts() -> None:
    lrs = _lrs(TrainConfig(epochs=7, lr=1.0, schedule="sgdr", sgdr_t0=1, sgdr_mult=2, warmup_epochs=0), 10)
    assert lrs[0] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0) and lrs[30] == pytest.approx(1.0)
    assert lrs[9] < 0.05 and lrs[29] < 0.05 and lrs[20] == pytest.approx(0.5)


def test_multistep_by_epochs_and_fractions() -> None:
    cfg = TrainConfig(epochs=10, lr=1.0, schedule="multistep", milestones=(5.0, 8.0), gamma=0.1, warmup_epochs=0)
    lrs = _lrs(cfg, 1)
    assert lrs == pytest.approx([1.0] * 5 + [0.1] * 3 + [0.01] * 2)
    frac = TrainConfig(epochs=10, lr=1.0, schedule="multistep", milestones=(0.5,), warmup_epochs=0)
    assert _lrs(frac, 1) == pytest.approx([1.0] * 5 + [0.1] * 5)


def test_onecycle_rises_then_falls() -> None:
    lrs = _lrs(TrainConfig(epochs=10, lr=1.0, schedule="onecycle"), 10)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[0] == pytest.approx(0.04) and lrs[peak] == pytest.approx(1.0) and 25 <= peak <= 35
    assert lrs[-1] < 0.01


def test_no_weight_decay_on_norm_and_bias() -> None:
    model = students.create("r1_1_c4")
    groups = param_groups(model, 5e-4, decay_norm_and_bias=False)
    decayed = {id(p) for p in groups[0]["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1), name
    assert groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("name", ["sgd", "adamw", "adam", "adadelta", "adagrad", "rmsprop"])
def test_every_optimizer_steps(name: str) -> None:
    model = students.create("r1_1_c4")
    opt = build_optimizer(model, TrainConfig(optimizer=name, lr=0.01))
    before = model.fc.weight.detach().clone()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.fc.weight)


@pytest.mark.parametrize("bad", [dict(optimizer="sgdd"), dict(epochs=0), dict(kd_weight=1.5), dict(lr=-1.0),
                                 dict(schedule="linear"), dict(milestones=(8.0, 5.0))])
def test_invalid_settings_are_rejected(bad: dict) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


def test_config_round_trip(tmp_path) -> None:
    cfg = TrainConfig(student="r2_11", milestones=(3.0, 6.0), mixup=0.2, teacher="resnet18")
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
