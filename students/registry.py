"""Build students by name, and register them with timm so ``timm.create_model("r4_3323")`` works.

Names are preset names (``seed000`` .. ``seed004``) or spec strings. Registration is idempotent; any valid
spec string is registered with timm the first time timm is asked for it (see :func:`_install_timm_hook`).
timm builds them with its own ``build_model_with_cfg``, so ``features_only=True``, ``out_indices`` and
``feature_cls`` work as for timm's CNNs.
"""

from __future__ import annotations

import logging

from timm.models import _registry as timm_registry
from timm.models import build_model_with_cfg, register_model
from torch import nn

from .cost import check_spec_cost
from .model import CifarResNet, default_cfg
from .errors import UserError
from .presets import PRESETS, Preset
from .spec import SpecError, StudentSpec, format_spec, parse_spec, suggest

__all__ = ["PRESETS", "Preset", "resolve", "create", "register", "count_params", "BudgetError"]

_logger = logging.getLogger(__name__)


class BudgetError(UserError):
    """A student with more parameters than its ``max_params`` budget."""


def resolve(name: str) -> StudentSpec:
    """The spec behind a preset name or spec string; :class:`SpecError` with a hint when it is neither."""
    if name in PRESETS:
        return parse_spec(PRESETS[name].spec)
    try:
        return parse_spec(name)
    except SpecError as err:
        if not name.startswith("r") or not name[1:2].isdigit():
            hint = suggest(name, list(PRESETS) + [p.spec for p in PRESETS.values()])
            raise SpecError(
                f"{name!r} is not a student: use a spec such as r4_3323 (rN_B1..BN[_c..][_f..][_k.][_s.][_mp][_d.]) "
                f"or a preset ({', '.join(PRESETS)}){hint}"
            ) from None
        raise


def count_params(model) -> int:
    """Total number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def create(
    name: str | StudentSpec,
    num_classes: int = 10,
    *,
    max_params: int | None = None,
    **kwargs: object,
) -> CifarResNet:
    """Build a student by preset name, spec string or :class:`StudentSpec`.

    Raises :class:`SpecError` for a malformed name and :class:`BudgetError` when the student has more than
    ``max_params`` parameters.
    """
    spec = resolve(name) if isinstance(name, str) else name
    # Counted from the spec before any module exists: a huge typo is refused without allocating anything.
    n = _checked_num_params(spec, num_classes, kwargs)
    if max_params is not None and n > max_params:
        raise BudgetError(
            f"student {format_spec(spec)} has {n:,} parameters, over the budget of {max_params:,}; "
            "choose fewer blocks or narrower channels (see `students show`)"
        )
    return CifarResNet(spec, num_classes=num_classes, **kwargs)


def _checked_num_params(spec: StudentSpec | str, num_classes: int, kwargs: dict) -> int:
    """:func:`check_spec_cost` for the arguments a :class:`CifarResNet` is about to be built with."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    in_chans = kwargs.get("in_chans", 3)
    widths = kwargs.get("widths")
    return check_spec_cost(spec, num_classes, in_chans=in_chans, widths=widths)  # type: ignore[arg-type]


def _entrypoint(spec_name: str):
    def fn(pretrained: bool = False, **kwargs: object) -> nn.Module:
        """Build the student through timm's builder, so ``features_only``/``out_indices`` work as for timm CNNs."""
        if pretrained:
            raise ValueError(f"student {spec_name} has no pretrained weights; load a checkpoint instead")
        _checked_num_params(spec_name, int(kwargs.get("num_classes", 10)), kwargs)  # type: ignore[arg-type]
        num_levels = len(resolve(spec_name).blocks) + 1  # the stem and every stage
        num_classes = int(kwargs.get("num_classes", 10))  # type: ignore[arg-type]
        cfg = kwargs.pop("pretrained_cfg", None) or default_cfg(num_classes)
        return build_model_with_cfg(
            CifarResNet,
            spec_name,
            pretrained=False,
            pretrained_cfg=cfg,
            # "stages" is one Sequential of stages: flattening lets FeatureListNet tap "stages.0", "stages.1", ...
            feature_cfg={"flatten_sequential": True, "out_indices": tuple(range(num_levels))},
            spec=spec_name,
            **kwargs,
        )

    fn.__name__ = spec_name
    fn.__qualname__ = spec_name
    fn.__module__ = __name__
    return fn


def register(name: str) -> str:
    """Register a preset or spec with timm under ``name`` (idempotent) and return the registered name."""
    if name in timm_registry._model_entrypoints:
        return name
    spec = PRESETS[name].spec if name in PRESETS else format_spec(resolve(name))
    fn = _entrypoint(spec)
    fn.__name__ = name
    register_model(fn)
    return name


class _OnDemandEntrypoints(dict):
    """timm's entrypoint table, extended so an unknown name that parses as a student spec registers itself.

    timm looks names up with ``in`` and ``[]`` on this one dict, so this is the narrowest place to hook.
    """

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or (isinstance(key, str) and _try_register(key))

    def __missing__(self, key: str):
        if isinstance(key, str) and _try_register(key):
            return dict.__getitem__(self, key)
        raise KeyError(key)


def _try_register(name: str) -> bool:
    if not (name.startswith("r") and name[1:2].isdigit()):
        return False
    try:
        parse_spec(name)
    except SpecError:
        return False
    fn = _entrypoint(name)
    dict.__setitem__(timm_registry._model_entrypoints, name, fn)
    timm_registry._model_to_module[name] = __name__.rsplit(".", 1)[-1]
    timm_registry._module_to_models[__name__.rsplit(".", 1)[-1]].add(name)
    return True


def _install_timm_hook() -> None:
    table = timm_registry._model_entrypoints
    if isinstance(table, _OnDemandEntrypoints):
        return
    if type(table) is not dict:  # another tool already replaced it: keep theirs, presets still register
        _logger.debug("timm entrypoint table is %s; spec strings register only via students.register", type(table))
        return
    timm_registry._model_entrypoints = _OnDemandEntrypoints(table)


def _register_defaults() -> None:
    _install_timm_hook()
    for name, preset in PRESETS.items():
        register(name)
        if "." not in preset.spec:  # timm reads '.' as a weight tag: "r3_443_d0.4" is reachable as "seed003"
            register(preset.spec)
