"""Named settings: the seed reports' training recipes (``distill run --recipe seed000``) and the teacher
recipe ``distill run`` trains a missing teacher with. Every recipe is a set of :class:`TrainConfig` overrides.

Each recipe is the report's optimiser, learning rate, schedule, epochs, batch size and augmentation on its
preset student (``students.PRESETS``). Where a report leaves a value out, the choice made here is marked
"not stated" with the reason for the value picked. Flags given beside ``--recipe`` override it.
"""

from __future__ import annotations

from typing import Any

from students.common.errors import UserError

from .config import TrainConfig
from students.spec import suggest

__all__ = ["RECIPES", "TEACHER_RECIPES", "DEFAULT_TEACHER_RECIPE", "recipe_overrides", "teacher_config",
           "teacher_recipe_record"]

RECIPES: dict[str, dict[str, Any]] = {
    # Report 000: Adadelta, lr 0.01, weight decay 1e-4, cosine with warm restarts, 300 epochs, crop + flip.
    # Not stated: batch size (128 chosen, the pytorch-cifar default the report builds on), T_0 and T_mult
    # (10 and 2: restarts after 10, 30, 70, 150 and 310 epochs).
    "seed000": dict(
        student="seed000", optimizer="adadelta", lr=0.01, weight_decay=1e-4, schedule="sgdr", sgdr_t0=10,
        sgdr_mult=2, warmup_epochs=0.0, epochs=300, batch_size=128, crop_padding=4, flip=True,
    ),
    # Report 001: SGD, weight decay 1e-4, cosine annealing, 100 epochs, batch 20, CutMix or MixUp per batch.
    # Not stated: lr and momentum (0.02 with momentum 0.9: 0.1 per 128 images scaled to batch 20 is
    # 0.016), mixing strengths (alpha 1.0 for both, timm's usual choice).
    "seed001": dict(
        student="seed001", optimizer="sgd", lr=0.02, momentum=0.9, nesterov=False, weight_decay=1e-4,
        schedule="cosine", warmup_epochs=0.0, epochs=100, batch_size=20, mixup=1.0, cutmix=1.0, mix_prob=1.0,
    ),
    # Report 002: SGD with a cosine schedule, 80+ epochs, flips. Not stated: lr (0.1, the peak its log
    # shows), batch (64, its exploration runs), weight decay (5e-4), momentum (0.9).
    "seed002": dict(
        student="seed002", optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
        schedule="cosine", warmup_epochs=0.0, epochs=80, batch_size=64, crop_padding=4, flip=True,
    ),
    # Report 003: SGD momentum 0.9, weight decay 5e-4, MultiStepLR gamma 0.1, 200 epochs, batch 100.
    # Not stated: lr (0.1) and milestones (epochs 100 and 150, the pytorch-cifar convention).
    "seed003": dict(
        student="seed003", optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
        schedule="multistep", milestones=(100.0, 150.0), gamma=0.1, warmup_epochs=0.0, epochs=200,
        batch_size=100, crop_padding=4, flip=True,
    ),
    # Report 004: Adam, cosine decay, 200 epochs, batch 32, mixup. Not stated: lr (1e-3, Adam's default
    # and the Keras example's), weight decay (0), mixup alpha (0.2, Zhang et al.'s CIFAR setting).
    "seed004": dict(
        student="seed004", optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="cosine", warmup_epochs=0.0,
        epochs=200, batch_size=32, mixup=0.2, mix_prob=1.0, crop_padding=4, flip=True,
    ),
}


def recipe_overrides(name: str) -> dict[str, Any]:
    """The settings of recipe ``name``; :class:`UserError` with a suggestion for an unknown name."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}{suggest(name, list(RECIPES))}")
    return {**RECIPES[name], "recipe": name}


# ---------------------------------------------------------------------------------------- teacher recipes
#
# "teacher-default" is the recipe `distill run` trains a teacher with when none is stored for it (and
# `--teacher-ckpt` is not given). Every value that decides how the teacher learns is written here, in one
# place, with its reason; the rest follows the student's run (TEACHER_INHERITS): the data and its subsets,
# the batch size, mixing, device and seed. The teacher's epochs and peak lr are its own: --teacher-epochs
# (default: the student's --epochs) and --teacher-lr (default: the recipe's lr below), never the student's lr.
# The recipe's name and values are recorded in the teacher's config.json and in the student's summary.json
# ("teacher_recipe"), and they are part of the teacher store's key, so a teacher trained with other values is
# never served as this one.
TEACHER_RECIPES: dict[str, dict[str, Any]] = {
    "teacher-default": dict(
        optimizer="sgd", momentum=0.9, nesterov=True,  # the CIFAR ResNet standard (He et al. 2016)
        lr=0.1,  # peak, for the run's batch (256 by default); linear warm-up then cosine decay to 0
        schedule="cosine", warmup_epochs=1.0, min_lr_ratio=0.0,
        weight_decay=5e-4,  # CIFAR ResNets' usual L2; BN and biases are not decayed (decay_norm_and_bias False)
        decay_norm_and_bias=False,
        # No label smoothing: teachers trained with it distil worse, because smoothing erases the similarity
        # between wrong classes that KD transfers (Muller, Kornblith & Hinton, "When does label smoothing
        # help?", NeurIPS 2019). benchmarks/kd_ablation.py measures it at CPU scale (issue 15).
        label_smoothing=0.0,
        crop_padding=4, flip=True, cutout=0,  # the standard CIFAR augmentation (pad 4, random crop, flip)
    ),
}
DEFAULT_TEACHER_RECIPE = "teacher-default"
TEACHER_INHERITS = (
    "teacher", "teacher_mode", "teacher_pretrained", "teacher_weights", "data", "train_subset", "test_subset",
    "val_split", "batch_size", "mixup", "cutmix", "mix_prob", "device", "amp", "seed", "data_seed", "channels_last",
    "compile", "teacher_cache", "deterministic", "save_every", "weight_init", "zero_init_last",
)


def teacher_config(student_cfg: TrainConfig, recipe: str = DEFAULT_TEACHER_RECIPE) -> TrainConfig:
    """Settings to train ``student_cfg``'s teacher: the teacher recipe on the student run's data, with the
    teacher's own epochs (``teacher_epochs``, else the run's ``epochs``) and lr (``teacher_lr``, else the
    recipe's)."""
    if recipe not in TEACHER_RECIPES:
        raise UserError(f"unknown teacher recipe {recipe!r}; choose one of {', '.join(TEACHER_RECIPES)}"
                        f"{suggest(recipe, list(TEACHER_RECIPES))}")
    settings = {name: getattr(student_cfg, name) for name in TEACHER_INHERITS}
    settings.update(TEACHER_RECIPES[recipe])
    settings["epochs"] = student_cfg.teacher_epochs or student_cfg.epochs
    if student_cfg.teacher_lr is not None:
        settings["lr"] = student_cfg.teacher_lr
    return TrainConfig(kind="teacher", recipe=recipe, **settings)


def teacher_recipe_record(teacher_cfg: TrainConfig) -> dict[str, Any]:
    """What a run records about how its teacher was trained: the recipe's name and the values it set, with
    the epochs, lr and batch size the teacher actually used."""
    values = TEACHER_RECIPES.get(teacher_cfg.recipe or "", {})
    record = {"name": teacher_cfg.recipe, **{key: getattr(teacher_cfg, key) for key in values}}
    record.update(epochs=teacher_cfg.epochs, lr=teacher_cfg.lr, batch_size=teacher_cfg.batch_size)
    return record
