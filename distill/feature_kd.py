"""Feature distillation: the student imitates the teacher's stage feature maps, beside a logit loss.

Two methods, each a loss on lists of matched feature maps (student stage ``j`` against teacher level ``j``):

- ``fitnet``: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (ICLR). A learned regressor per
  matched stage maps the student's map to the teacher's channels, and the student is trained to make the
  regressed map equal the teacher's (:class:`HintLoss`). The regressors are trainable parameters.
- ``at``: Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (ICLR). Each map becomes a
  spatial attention map (the mean over channels of ``|f|^p``, L2-normalised), and the student matches
  the teacher's (:class:`AttentionLoss`). Parameter-free.

Why attention transfer as the stronger method, and not ReviewKD (Chen et al. 2021, CVPR) or CRD: AT has no
parameters and no hyper-parameters besides its weight, costs one channel mean per stage, compares maps
whatever the two networks' widths, and is the method the AT paper designed for exactly our case, CIFAR
ResNets whose stages meet at equal resolutions. Honest expectations from mdistiller's CIFAR-100 tables:
AT alone beats FitNets on most ResNet pairs but not plain KD (e.g. resnet56 -> resnet20: FitNets 69.21,
AT 70.55, KD 70.66); ReviewKD is 1-2 points above KD but adds a learned attention-based fusion module per
stage and a multi-level pyramid loss (more parameters and compute per step; not measured here). So the
intended use is AT *with* the logit term (``kd+at``), which :class:`FeatureKD` provides; ReviewKD is the
next method to add if the benchmark needs it.

Where the features come from: every model that declares timm's ``feature_info`` (every timm CNN and every
student, see :class:`students.CifarResNet`). Forward hooks on the declared modules record their outputs
during the model's ordinary forward pass (as timm's ``FeatureHookNet`` does), so one pass gives logits and
features, and the student may be wrapped in DDP, ``torch.compile`` (checked with its ``aot_eager`` backend)
or an input adapter: DDP averages the student's gradients as usual; the FitNets regressors sit outside it
and need :meth:`FeatureKD.average_gradients`. The hooks live only inside :meth:`FeatureKD.capture` (one
training step), so EMA copies and evaluation passes never record anything.

Which levels are matched (:func:`match_levels`): each student stage (never its stem) is paired with the
deepest teacher level of the same spatial size, the AT paper's rule; when no sizes agree (e.g. a teacher
in upsample mode at 224 pixels) the deepest levels are paired from the end, and the larger map of each
pair is average-pooled to the smaller size. Sizes are measured by one probe forward pass of one image at
build time, because a teacher adapted to CIFAR input (3x3 stride-1 stem, no max-pool) keeps the ImageNet
reductions in its ``feature_info``.

Every loss returns a dict like the logit losses (:mod:`distill.losses`): ``{"loss", "ce", "kd", "feat"}``
where ``"feat"`` is the unweighted feature term and ``"loss" = logit_loss + feat_weight * feat``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from students.errors import UserError
from students.spec import suggest

from .losses import KD_LOSSES, CELoss, LogitLoss, build_loss

__all__ = [
    "AttentionLoss",
    "FEATURE_METHODS",
    "FeatureAPIError",
    "FeatureKD",
    "FeatureLevel",
    "FeatureLoss",
    "HintLoss",
    "align_spatial",
    "attention_map",
    "build_feature_kd",
    "feature_kd_names",
    "feature_levels",
    "is_feature_method",
    "match_levels",
    "probe_levels",
    "split_method",
    "stage_features",
]

# Teachers named in the "no feature API" error: examples of each family that declares feature_info.
_FEATURE_TEACHERS = (
    "a student spec or preset (seed000..seed004, r3_333_c16-32-64) or a timm CNN, best in cifar mode "
    "(resnet18, resnet50, resnet10t, wide_resnet50_2, resnext50_32x4d, convnext_tiny, efficientnet_b0, regnety_008)"
)


class FeatureAPIError(UserError):
    """A teacher (or student) that cannot give stage feature maps; the message names models that can."""


# ------------------------------------------------------------------------------------------ the features


class FeatureLevel(dict):
    """One entry of a model's ``feature_info``, plus the measured ``shape`` (C, H, W) for the probe input."""


def _unwrap(model: nn.Module) -> nn.Module:
    """The network that owns the feature modules, inside FrozenTeacher, DDP, torch.compile or (adapter, net)."""
    for _ in range(8):
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "adapter") and isinstance(getattr(model, "model", None), nn.Module):  # FrozenTeacher
            model = model.model
        elif isinstance(model, nn.Sequential) and len(model) == 2 and hasattr(model[1], "feature_info"):
            model = model[1]  # the engine's nn.Sequential(input_adapter, model)
        else:
            break
    return model


def _name_of(model: nn.Module) -> str:
    net = _unwrap(model)
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return str(getattr(net, "spec_name", None) or cfg.get("architecture") or type(net).__name__)


def _no_api(role: str, name: str, why: str) -> FeatureAPIError:
    return FeatureAPIError(
        f"{role} {name} gives no stage features ({why}); feature distillation ({', '.join(FEATURE_METHODS)}) "
        f"needs a {role} with timm's feature API: {_FEATURE_TEACHERS}; or choose a logit loss "
        f"({', '.join(KD_LOSSES)})"
    )


def feature_levels(model: nn.Module, *, role: str = "teacher") -> list[FeatureLevel]:
    """The levels a model declares in timm's ``feature_info``: ``num_chs``, ``reduction``, ``module``.

    ``model`` may be wrapped (FrozenTeacher, DDP, torch.compile). Raises :class:`FeatureAPIError`, naming
    ``role`` and the models that do have a feature API, when it declares none or names missing modules.
    """
    net = _unwrap(model)
    name = _name_of(model)
    if isinstance(net, torch.fx.GraphModule):
        raise _no_api(role, name, "its BatchNorm was folded by torch.fx; build FrozenTeacher with fold_bn=False")
    info = getattr(net, "feature_info", None)
    if hasattr(info, "get_dicts"):  # a timm FeatureInfo (features_only wrappers)
        info = info.get_dicts()
    if not isinstance(info, (list, tuple)) or not info or not all(
        isinstance(d, dict) and "module" in d and "num_chs" in d for d in info
    ):
        raise _no_api(role, name, "it declares no feature_info")
    levels = []
    for d in info:
        try:
            net.get_submodule(str(d["module"]))
        except AttributeError:
            raise _no_api(role, name, f"its feature_info names a module {d['module']!r} it does not have") from None
        levels.append(FeatureLevel(d))
    return levels


@contextlib.contextmanager
def _recording(model: nn.Module, indices: Sequence[int], *, role: str = "teacher") -> Iterator[list[Tensor | None]]:
    """Forward hooks on the modules of levels ``indices``; yields the list their outputs land in, in order."""
    net = _unwrap(model)
    levels = feature_levels(model, role=role)
    slots: list[Tensor | None] = [None] * len(indices)
    handles = []

    def hook_for(k: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            slots[k] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    try:
        for k, i in enumerate(indices):
            handles.append(net.get_submodule(str(levels[i]["module"])).register_forward_hook(hook_for(k)))
        yield slots
    finally:
        for h in handles:
            h.remove()


def _collect(slots: list[Tensor | None], model: nn.Module, indices: Sequence[int], role: str) -> list[Tensor]:
    missing = [i for i, s in zip(indices, slots) if s is None]
    if missing:
        raise _no_api(role, _name_of(model), f"feature levels {missing} were not computed by its forward pass")
    out = []
    for i, f in zip(indices, slots):
        if f.ndim != 4:
            raise _no_api(role, _name_of(model), f"level {i} is a {f.ndim}-d tensor, not an N x C x H x W map")
        # A teacher under inference_mode gives inference tensors, which autograd may not save; a copy made
        # here, outside that mode, is an ordinary tensor.
        out.append(f.clone() if f.is_inference() else f)
    return out


def stage_features(
    model: nn.Module, x: Tensor, indices: Sequence[int] | None = None, *, role: str = "teacher"
) -> tuple[Tensor, list[Tensor]]:
    """One ordinary forward pass of ``model`` on ``x``: its output (logits) and the maps of levels ``indices``.

    Works for any model with timm's ``feature_info`` (students, timm CNNs), also wrapped in a FrozenTeacher
    (the teacher stays frozen: its forward runs as always, under ``inference_mode``). ``indices`` default to
    every level. Gradients flow to the maps as to the logits when the model is trainable.
    """
    levels = feature_levels(model, role=role)
    indices = list(range(len(levels))) if indices is None else list(indices)
    bad = [i for i in indices if not 0 <= i < len(levels)]
    if bad:
        raise ValueError(f"indices {bad} out of range for the {len(levels)} feature levels of {_name_of(model)}")
    with _recording(model, indices, role=role) as slots:
        out = model(x)
    return out, _collect(slots, model, indices, role)


def probe_levels(
    model: nn.Module, input_size: Sequence[int] = (3, 32, 32), *, role: str = "teacher"
) -> list[FeatureLevel]:
    """:func:`feature_levels` with each level's measured ``shape`` (C, H, W) for one image of ``input_size``.

    Runs one forward pass in eval mode without gradients (BatchNorm statistics are untouched) and restores
    the model's mode.
    """
    levels = feature_levels(model, role=role)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, feats = stage_features(model, torch.zeros(1, *input_size, device=device, dtype=dtype), role=role)
    finally:
        model.train(was_training)
    for level, f in zip(levels, feats):
        level["shape"] = tuple(f.shape[1:])
        if level["shape"][0] != level["num_chs"]:
            raise _no_api(role, _name_of(model), f"level {level['module']} has {level['shape'][0]} channels, "
                          f"feature_info says {level['num_chs']}")
    return levels


def _is_stem(level: dict, index: int) -> bool:
    return index == 0 and str(level["module"]).split(".")[0] in ("stem", "act1", "bn1", "conv1", "relu")


def match_levels(student: Sequence[dict], teacher: Sequence[dict]) -> list[tuple[int, int]]:
    """Pairs ``(student level, teacher level)`` to distil, from levels with measured ``shape`` (C, H, W).

    Each student stage (not its stem) pairs with the deepest teacher level of the same spatial size that
    is not a stem; without any such pair, the deepest ``min(#student stages, #teacher levels)`` levels
    pair from the end.
    """
    s_idx = [i for i, lv in enumerate(student) if not _is_stem(lv, i)] or list(range(len(student)))
    t_idx = [i for i, lv in enumerate(teacher) if not _is_stem(lv, i)] or list(range(len(teacher)))
    pairs = []
    for i in s_idx:
        same = [j for j in t_idx if tuple(teacher[j]["shape"][1:]) == tuple(student[i]["shape"][1:])]
        if same:
            pairs.append((i, same[-1]))
    if pairs:
        return pairs
    k = min(len(s_idx), len(t_idx))
    return list(zip(s_idx[-k:], t_idx[-k:]))


# ----------------------------------------------------------------------------------------------- losses


def align_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two N x C x H x W maps to the other's height and width (never upsample)."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis 2017, eq. 2 with F_sum^p: ``Q = mean_c |f_c|^p``, N x 1 x H x W (unnormalised)."""
    return f.float().abs().pow(p).mean(dim=1, keepdim=True)


class FeatureLoss(nn.Module):
    """A distillation term on matched lists of feature maps; returns one unweighted scalar."""

    name = "feature"
    default_weight = 1.0

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def _check(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], n: int | None = None) -> None:
        if len(student_feats) != len(teacher_feats) or (n is not None and len(student_feats) != n):
            raise ValueError(
                f"{len(student_feats)} student and {len(teacher_feats)} teacher feature maps"
                + (f" for {n} matched levels" if n is not None else "")
            )
        for s, t in zip(student_feats, teacher_feats):
            if s.ndim != 4 or t.ndim != 4 or s.shape[0] != t.shape[0]:
                raise ValueError(
                    f"feature maps must be N x C x H x W with equal N, got {tuple(s.shape)} and {tuple(t.shape)}"
                )


class HintLoss(FeatureLoss):
    """FitNets hints (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", ICLR), one per matched level.

    ``feat = mean_j mean((BN_j(W_j * s_j) - t_j)^2)``: the regressor ``W_j`` is a 1x1 convolution from the
    student's to the teacher's channels followed by BatchNorm, as the regressors of mdistiller and the CRD
    code base; the larger map of a pair is average-pooled to the other's size (:func:`align_spatial`), and
    the squared error is averaged over every element. The paper trains hints in a first stage and KD after;
    like mdistiller and CRD we train both at once. Default weight 100 (mdistiller's CIFAR-100 FitNets, one
    hint): averaging over levels keeps that scale for several.

    Args:
        student_channels, teacher_channels: channels of each matched level, in the same order.
    """

    name = "fitnet"
    default_weight = 100.0

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels) or not student_channels:
            raise ValueError(
                f"need one teacher width per student width, got {list(student_channels)} and {list(teacher_channels)}"
            )
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(int(cs), int(ct), 1, bias=False), nn.BatchNorm2d(int(ct)))
            for cs, ct in zip(student_channels, teacher_channels)
        )
        for proj in self.projections:
            nn.init.kaiming_normal_(proj[0].weight, mode="fan_out", nonlinearity="relu")

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
        self._check(student_feats, teacher_feats, len(self.projections))
        terms = []
        for proj, s, t in zip(self.projections, student_feats, teacher_feats):
            r, t = align_spatial(proj(s).float(), t.detach().float())
            terms.append(F.mse_loss(r, t))
        return torch.stack(terms).mean()


class AttentionLoss(FeatureLoss):
    """Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention", ICLR), activation-based.

    ``a(f) = vec(Q(f)) / ||vec(Q(f))||_2`` with ``Q(f) = mean_c |f_c|^p`` (:func:`attention_map`), and
    ``feat = sum_j mean_{n, hw} (a(s_j) - a(t_j))^2``, the authors' code (``at_loss``) summed over the
    matched levels. Maps of different sizes are average-pooled to the smaller before normalising.
    Default weight 1000 with ``p = 2`` (mdistiller's CIFAR-100 setting; the authors' code has beta/2 = 500).

    Args:
        p: exponent of the attention map (2 in the paper's experiments).
    """

    name = "at"
    default_weight = 1000.0

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        if not (math.isfinite(p) and p > 0):
            raise UserError(f"attention exponent p must be positive, got {p}")
        self.p = float(p)

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
        self._check(student_feats, teacher_feats)
        terms = []
        for s, t in zip(student_feats, teacher_feats):
            qs, qt = align_spatial(attention_map(s, self.p), attention_map(t.detach(), self.p))
            a_s = F.normalize(qs.flatten(1), dim=1)
            a_t = F.normalize(qt.flatten(1), dim=1)
            terms.append((a_s - a_t).pow(2).mean())
        return torch.stack(terms).sum()

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


FEATURE_METHODS: dict[str, type[FeatureLoss]] = {"fitnet": HintLoss, "at": AttentionLoss}


# ------------------------------------------------------------------------------------ logit + feature term


class FeatureKD(nn.Module):
    """A logit loss plus a weighted feature term: ``loss = logit_loss(...)["loss"] + feat_weight * feat``.

    The only parameters are the feature loss's (FitNets regressors): add ``feature_kd.parameters()`` to the
    optimiser, move the module to the student's device, and save its ``state_dict`` with the student's
    checkpoint to resume. Student and teacher are referenced, not registered: they are not in
    ``parameters()`` or ``state_dict()``.

    A training step::

        with loss_fn.capture():                     # hooks on the matched levels, for this step only
            teacher_logits = teacher(images)        # FrozenTeacher as usual
            logits = model(images)                  # the (DDP / compiled / adapted) student
            parts = loss_fn(logits, teacher_logits, targets)   # {"loss", "ce", "kd", "feat", ...}

    or, with features computed elsewhere (e.g. one teacher pass shared by several students),
    ``loss_fn(logits, teacher_logits, targets, student_feats=..., teacher_feats=...)``.

    Args:
        student, teacher: the models whose levels ``pairs`` index (wrappers allowed).
        feature_loss: :class:`HintLoss` or :class:`AttentionLoss` for ``len(pairs)`` levels.
        pairs: ``(student level, teacher level)`` indices into each model's ``feature_info``.
        logit_loss: the logit term, e.g. ``build_loss("kd")``; None gives cross-entropy only.
        feat_weight: weight of the feature term (>= 0); None takes the method's published default.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        feature_loss: FeatureLoss,
        pairs: Sequence[tuple[int, int]],
        *,
        logit_loss: LogitLoss | None = None,
        feat_weight: float | None = None,
    ) -> None:
        super().__init__()
        if not pairs:
            raise ValueError("pairs must name at least one (student level, teacher level)")
        feat_weight = feature_loss.default_weight if feat_weight is None else float(feat_weight)
        if not (math.isfinite(feat_weight) and feat_weight >= 0):
            raise UserError(f"feature weight must be non-negative, got {feat_weight}")
        self.logit_loss = logit_loss if logit_loss is not None else CELoss()
        self.feature_loss = feature_loss
        self.feat_weight = feat_weight
        self.pairs = [(int(i), int(j)) for i, j in pairs]
        # Plain attributes (object.__setattr__), so neither network joins parameters() or state_dict().
        object.__setattr__(self, "_student", student)
        object.__setattr__(self, "_teacher", teacher)
        self._slots: tuple[list[Tensor | None], list[Tensor | None]] | None = None
        plain_ce = isinstance(self.logit_loss, CELoss)
        self.name = feature_loss.name if plain_ce else f"{self.logit_loss.name}+{feature_loss.name}"

    # The engine reads these from any loss (summaries, DKD's warm-up).
    @property
    def temperature(self) -> float:
        return self.logit_loss.temperature

    @property
    def kd_weight(self) -> float:
        return self.logit_loss.kd_weight

    @property
    def ce_weight(self) -> float:
        return self.logit_loss.ce_weight

    def set_epoch(self, epoch: int) -> None:
        self.logit_loss.set_epoch(epoch)

    @property
    def student_indices(self) -> list[int]:
        return [i for i, _ in self.pairs]

    @property
    def teacher_indices(self) -> list[int]:
        return [j for _, j in self.pairs]

    @contextlib.contextmanager
    def capture(self, *, teacher: bool = True) -> Iterator[None]:
        """Record the matched levels of student and teacher during the forward passes inside this block.

        ``teacher=False`` records the student only: the teacher's maps are then passed to the call as
        ``teacher_feats`` (one teacher pass shared by several students, :mod:`distill.sweep`).
        """
        with contextlib.ExitStack() as stack:
            s_slots = stack.enter_context(_recording(self._student, self.student_indices, role="student"))
            t_slots = (stack.enter_context(_recording(self._teacher, self.teacher_indices, role="teacher"))
                       if teacher else [None] * len(self.pairs))
            self._slots = (s_slots, t_slots)
            try:
                yield
            finally:
                self._slots = None

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor,
        student_feats: Sequence[Tensor] | None = None,
        teacher_feats: Sequence[Tensor] | None = None,
    ) -> dict[str, Tensor]:
        parts = dict(self.logit_loss(student_logits, teacher_logits, targets))
        if teacher_logits is None and teacher_feats is None:
            return parts  # no teacher (baselines): the logit loss alone, as for logit methods
        if student_feats is None or teacher_feats is None:
            if self._slots is None:
                raise RuntimeError("no features: run the forward passes inside `with loss_fn.capture():` "
                                   "or pass student_feats and teacher_feats")
            s_slots, t_slots = self._slots
            if student_feats is None:
                student_feats = _collect(s_slots, self._student, self.student_indices, "student")
            if teacher_feats is None:
                teacher_feats = _collect(t_slots, self._teacher, self.teacher_indices, "teacher")
        feat = self.feature_loss(student_feats, [t.detach() for t in teacher_feats])
        parts["loss"] = parts["loss"] + self.feat_weight * feat
        parts["feat"] = feat
        return parts

    def average_gradients(self) -> None:
        """Average this module's gradients over the ranks of a torch.distributed job; a no-op without one.

        DDP averages the student's gradients, but the FitNets regressors live outside the DDP-wrapped
        model: call this after ``backward()`` and before ``optimizer.step()`` so every rank applies the
        same update and the regressors stay identical.
        """
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, feat_weight={self.feat_weight:g}"


# ---------------------------------------------------------------------------------------------- factory


def split_method(name: str) -> tuple[str | None, str]:
    """``"kd+at"`` -> ``("kd", "at")``; ``"at"`` -> ``(None, "at")``; :class:`UserError` for anything else."""
    logit, _, feature = name.rpartition("+")
    if feature in FEATURE_METHODS and (not logit or logit in KD_LOSSES):
        return (logit or None), feature
    raise UserError(
        f"unknown feature distillation method {name!r}{suggest(name, feature_kd_names())}; choose one of "
        f"{', '.join(feature_kd_names())}"
    )


def feature_kd_names() -> list[str]:
    """Every method name :func:`build_feature_kd` accepts: ``fitnet``, ``at``, ``kd+fitnet``, ``dkd+at``, ..."""
    return [*FEATURE_METHODS, *(f"{lg}+{ft}" for lg in KD_LOSSES for ft in FEATURE_METHODS)]


def is_feature_method(name: str) -> bool:
    """True for a name :func:`build_feature_kd` accepts (the engine's switch between the two loss kinds)."""
    return name in feature_kd_names()


def build_feature_kd(
    method: str,
    student: nn.Module,
    teacher: nn.Module,
    *,
    input_size: Sequence[int] | None = None,
    pairs: Sequence[tuple[int, int]] | None = None,
    feat_weight: float | None = None,
    logit_loss: LogitLoss | None = None,
    temperature: float | None = None,
    kd_weight: float | None = None,
    label_smoothing: float = 0.0,
    p: float = 2.0,
) -> FeatureKD:
    """Build a :class:`FeatureKD` by method name for this student and teacher, on the student's device.

    Args:
        method: ``fitnet`` or ``at`` (cross-entropy + feature term), or ``<logit>+<feature>`` with a logit
            loss of :data:`distill.losses.KD_LOSSES` (``kd+at``, ``dkd+fitnet``, ...).
        student, teacher: any models with timm's ``feature_info`` (wrappers allowed); a teacher without one
            raises :class:`FeatureAPIError` naming the teachers that have one.
        input_size: (C, H, W) of the student's images for the probe pass; default the student's
            ``pretrained_cfg['input_size']``.
        pairs: ``(student level, teacher level)`` to match; default :func:`match_levels`.
        feat_weight: weight of the feature term; None = the method's default (fitnet 100, at 1000).
        logit_loss: a ready logit loss, instead of building the named one from ``temperature``,
            ``kd_weight`` and ``label_smoothing`` (see :func:`distill.losses.build_loss`).
        p: attention exponent for ``at``.
    """
    logit_name, feature_name = split_method(method)
    if input_size is None:
        cfg = getattr(_unwrap(student), "pretrained_cfg", None) or {}
        input_size = tuple(cfg.get("input_size", (3, 32, 32)))
    t_levels = probe_levels(teacher, input_size, role="teacher")
    s_levels = probe_levels(student, input_size, role="student")
    if pairs is None:
        pairs = match_levels(s_levels, t_levels)
    for i, j in pairs:
        if not (0 <= i < len(s_levels) and 0 <= j < len(t_levels)):
            raise ValueError(f"pair ({i}, {j}) outside the student's {len(s_levels)} and the teacher's "
                             f"{len(t_levels)} feature levels")
    if feature_name == "fitnet":
        loss: FeatureLoss = HintLoss(
            [s_levels[i]["num_chs"] for i, _ in pairs], [t_levels[j]["num_chs"] for _, j in pairs]
        )
    else:
        loss = AttentionLoss(p=p)
    if logit_loss is None:
        logit_loss = build_loss(logit_name or "ce", temperature=temperature, kd_weight=kd_weight,
                                label_smoothing=label_smoothing)
    kd = FeatureKD(student, teacher, loss, pairs, logit_loss=logit_loss, feat_weight=feat_weight)
    param = next(_unwrap(student).parameters(), None)
    if param is not None:
        kd.to(param.device)
    return kd
