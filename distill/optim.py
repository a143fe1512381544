"""Optimisers and learning-rate schedules.

The schedule is one pure function of the step (:func:`lr_at`), written into the optimiser before every
step. That covers cosine with warm-up, SGDR warm restarts, multistep and one-cycle with one code path,
and makes resuming exact: the only state is the step counter. (timm's schedulers have no one-cycle, and
torch's keep per-class state that must be rebuilt in the same order on resume.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

__all__ = ["param_groups", "build_optimizer", "lr_at", "set_lr"]


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Two groups: weights with decay, and BatchNorm parameters plus biases (1-D tensors) without it."""
    if decay_norm_and_bias or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.optimizer`` over ``model``'s parameters, at ``cfg.lr``."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    name = cfg.optimizer
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if name == "adam":
        # Adam's weight_decay is L2 added to the gradient (the seeds' usage), unlike AdamW's decoupled decay.
        return torch.optim.Adam(groups, lr=cfg.lr)
    if name == "adadelta":
        return torch.optim.Adadelta(groups, lr=cfg.lr)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {name!r}")  # unreachable: TrainConfig validates


def _cosine(progress: float, floor: float) -> float:
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of a run of ``cfg.epochs`` epochs."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total - 1, 0))
    floor = cfg.min_lr_ratio
    if cfg.schedule == "onecycle":
        # Smith & Topin 2017, "Super-Convergence": linear ramp from lr/25 over the first 30%, cosine down.
        peak = max(int(0.3 * total), 1)
        if step < peak:
            return cfg.lr * (1 / 25 + (1 - 1 / 25) * step / peak)
        return cfg.lr * _cosine((step - peak) / max(total - peak, 1), max(floor, 1e-4))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return cfg.lr * _cosine((step - warmup) / max(total - warmup, 1), floor)
    if cfg.schedule == "sgdr":
        # Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm Restarts".
        epoch = (step - warmup) / steps_per_epoch
        length = float(cfg.sgdr_t0)
        while epoch >= length:
            epoch -= length
            length *= cfg.sgdr_mult
        return cfg.lr * _cosine(epoch / length, floor)
    if cfg.schedule == "multistep":
        epoch = step / steps_per_epoch
        marks = [m * cfg.epochs if m <= 1 else m for m in cfg.milestones]
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in marks)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")  # unreachable: TrainConfig validates


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
