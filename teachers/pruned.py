"""Pruned timm models in checkpoints: recorded as layer widths, rebuilt without pickling a module.

A student comes back from its spec plus the width of every convolution (:func:`students.build_student`). A
timm model has no such spec, so a pruned one is recorded as the architecture that rebuilds it unpruned
(:func:`teachers.teacher_arch`: name, classes, mode) plus, under :data:`PRUNED_LAYERS_KEY`, the widths of
every layer pruning narrowed: ``{"layer1.0.conv1": {"type": "Conv2d", "in_channels": 64, "out_channels": 40,
"groups": 1}, ...}``. Rebuilding creates the unpruned model the usual way (so cifar mode adapts its stem),
narrows those layers to the recorded widths (fresh tensors of the new shapes, filled by the weights that
follow), and the checkpoint's ``state_dict`` is then loaded strictly. Nothing but names and whole numbers is
stored, so the file loads with ``torch.load(weights_only=True)``; torch-pruning's own ``tp.state_dict``
pickles module attributes and does not.

Only layers whose shape is fully described by a few width attributes can be narrowed this way:
convolutions, linear layers, BatchNorm, LayerNorm and GroupNorm (timm's subclasses of them included).
:func:`resized_layers` refuses a pruned model in which any other layer changed shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from students.checkpoint import CheckpointError
from students.common.errors import UserError

__all__ = ["PRUNED_LAYERS_KEY", "PrunedModelError", "narrow_layers", "resized_layers", "sync_head_width"]

PRUNED_LAYERS_KEY = "pruned_layers"

_ConvNd = nn.modules.conv._ConvNd
_NormBase = nn.modules.batchnorm._NormBase  # BatchNorm1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d, ...
_RESIZABLE = "convolutions, linear layers, BatchNorm, LayerNorm and GroupNorm"


class PrunedModelError(UserError):
    """A pruned model with a layer whose new shape cannot be recorded as widths and rebuilt.

    ``reason`` says which tensor of which layer; the message adds what the library caller can do.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}; leave that layer unpruned (ignored_layers)")


def _widths(module: nn.Module) -> dict[str, Any] | None:
    """The width attributes that decide ``module``'s tensor shapes, or None for a layer we cannot narrow."""
    if isinstance(module, _ConvNd) and not module.transposed:
        return {"in_channels": module.in_channels, "out_channels": module.out_channels, "groups": module.groups}
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features}
    if isinstance(module, _NormBase):
        return {"num_features": module.num_features}
    if isinstance(module, nn.LayerNorm):
        return {"normalized_shape": [int(n) for n in module.normalized_shape]}
    if isinstance(module, nn.GroupNorm):
        return {"num_groups": module.num_groups, "num_channels": module.num_channels}
    return None


def _fresh(old: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    """A zero tensor like ``old`` with ``shape`` (the checkpoint's weights overwrite it), kept a Parameter
    when ``old`` was one; None stays None."""
    if old is None:
        return None
    new = torch.zeros(shape, dtype=old.dtype, device=old.device)
    return nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new


def _shapes(module: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of ``module``'s weight and of its per-channel tensors (bias, running statistics)."""
    if isinstance(module, _ConvNd):
        out = module.out_channels
        return (out, module.in_channels // module.groups, *module.kernel_size), (out,)
    if isinstance(module, nn.Linear):
        return (module.out_features, module.in_features), (module.out_features,)
    if isinstance(module, nn.LayerNorm):
        return tuple(module.normalized_shape), tuple(module.normalized_shape)
    count = module.num_features if isinstance(module, _NormBase) else module.num_channels  # BN, GroupNorm
    return (count,), (count,)


def _set_widths(module: nn.Module, widths: Mapping[str, Any]) -> None:
    """Narrow ``module`` to ``widths`` (checked by :func:`_check_record`): attributes and tensor shapes."""
    for key, value in widths.items():
        setattr(module, key, tuple(value) if key == "normalized_shape" else value)
    weight_shape, per_channel = _shapes(module)
    module.weight = _fresh(module.weight, weight_shape)
    for name in ("bias", "running_mean", "running_var"):
        if getattr(module, name, None) is not None:
            setattr(module, name, _fresh(getattr(module, name), per_channel))


def _valid(value: Any, was: Any) -> bool:
    """A recorded width: a whole number from 1 to the unpruned width (or a list of them, for LayerNorm)."""
    if isinstance(was, list):
        return isinstance(value, list) and len(value) == len(was) and all(map(_valid, value, was))
    return type(value) is int and 1 <= value <= was


def _check_record(name: str, module: nn.Module, record: Any) -> dict[str, Any]:
    """The widths ``record`` gives layer ``name``, checked: same layer type, whole numbers, no wider than
    the unpruned layer (so a damaged or hostile file cannot make us allocate more than the model itself),
    channel counts divisible by their groups."""
    original = _widths(module)
    if original is None or not isinstance(record, Mapping) or record.get("type") != type(module).__name__:
        raise CheckpointError(f"pruned layer {name!r} in checkpoint does not match the rebuilt "
                              f"{type(module).__name__}; the checkpoint is damaged or from another model")
    widths = {key: record.get(key) for key in original}
    for key, value in widths.items():
        if not _valid(value, original[key]):
            raise CheckpointError(f"pruned layer {name!r} in checkpoint has an invalid {key} {value!r} "
                                  f"(the unpruned layer has {original[key]}); the checkpoint is damaged")
    groups = widths.get("groups") or widths.get("num_groups") or 1
    counts = [widths[k] for k in ("in_channels", "out_channels", "num_channels") if k in widths]
    if any(count % groups for count in counts):
        raise CheckpointError(f"pruned layer {name!r} in checkpoint has channel counts {counts} not divisible "
                              f"by its {groups} groups; the checkpoint is damaged")
    return widths


def narrow_layers(model: nn.Module, layers: Any) -> nn.Module:
    """Narrow the layers of an unpruned ``model`` to the widths recorded under :data:`PRUNED_LAYERS_KEY`,
    in place; :class:`~students.checkpoint.CheckpointError` for a record that does not fit the model."""
    if not isinstance(layers, Mapping):
        raise CheckpointError(f"{PRUNED_LAYERS_KEY} in checkpoint is a {type(layers).__name__}, not a mapping of "
                              "layer names to widths; the checkpoint is damaged")
    modules = dict(model.named_modules())
    for name, record in layers.items():
        if not isinstance(name, str) or name not in modules:
            raise CheckpointError(f"pruned layer {name!r} in checkpoint is not a layer of the rebuilt model; the "
                                  "checkpoint is damaged or from another timm version")
        _set_widths(modules[name], _check_record(name, modules[name], record))
    return model


def resized_layers(pruned: nn.Module, unpruned: nn.Module, *, model_name: str) -> dict[str, dict[str, Any]]:
    """The record of every layer of ``pruned`` narrower than in ``unpruned`` (the same model before pruning,
    e.g. built on the meta device), checked to rebuild ``pruned`` exactly.

    ``unpruned`` is narrowed in place to the record, and every tensor of ``pruned`` must then have its shape:
    :class:`PrunedModelError` names the first layer that changed shape in a way widths cannot describe.
    """
    reference = dict(unpruned.named_modules())
    layers = {}
    for name, module in pruned.named_modules():
        widths, before = _widths(module), _widths(reference[name]) if name in reference else None
        if widths is not None and before is not None and widths != before:
            layers[name] = {"type": type(module).__name__, **widths}
    narrow_layers(unpruned, layers)
    want = {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in unpruned.state_dict().items()}
    modules = dict(pruned.named_modules())
    for key in [*want, *(k for k in have if k not in want)]:  # registration order: the first layer named
        if want.get(key) != have.get(key):
            owner = key.rpartition(".")[0]
            layer = modules.get(owner, reference.get(owner))
            where = f"layer {owner} ({type(layer).__name__})" if owner else "the model itself"
            raise PrunedModelError(
                f"cannot record the pruned {model_name}: {key} of {where} changed shape "
                f"({have.get(key)} unpruned, {want.get(key)} pruned) and only {_RESIZABLE} can be narrowed and "
                "rebuilt from a checkpoint"
            )
    return layers


def _pool_mult(pool: Any) -> int:
    """How many values per channel a timm global pool gives (2 for 'catavgmax'); 1 for anything else."""
    mult = getattr(pool, "feat_mult", None)
    return int(mult()) if callable(mult) else 1


def _feature_width(model: nn.Module) -> int | None:
    """Channels of ``model.forward_features`` on one blank image of its configured size (None for a model on
    the meta device, which has no values to run); NHWC and token outputs keep channels last."""
    param = next(model.parameters(), None)
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if param is None or param.device.type == "meta" or not size:
        return None
    was_training = model.training
    try:
        with torch.no_grad():
            feats = model.eval().forward_features(torch.zeros(1, *size, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
    nhwc = feats.ndim != 4 or str(getattr(model, "output_fmt", "NCHW")) == "NHWC"
    return int(feats.shape[-1] if nhwc else feats.shape[1])


def sync_head_width(model: nn.Module) -> nn.Module:
    """Bring a pruned timm model's width attributes in line with its narrowed layers, in place.

    Pruning narrows tensors but leaves ``num_features`` and ``head_hidden_size`` at the unpruned width, so
    ``reset_classifier()`` would build a head that does not fit. ``head_hidden_size`` becomes the input width
    of the classifier (``get_classifier()``), and so does ``num_features`` (divided by the pool's multiplier)
    unless a pre-logits layer sits between the features and the classifier (MobileNetV3's ``conv_head``), in
    which case the features are measured with one forward pass. A head module with its own widths (timm's
    ``ClassifierHead``) is updated too. Models without a linear or convolutional classifier are left alone.
    """
    get = getattr(model, "get_classifier", None)
    fc = get() if callable(get) else None
    width = fc.in_features if isinstance(fc, nn.Linear) else fc.in_channels if isinstance(fc, _ConvNd) else None
    if width is None or not hasattr(model, "num_features"):
        return model
    head = getattr(model, "head", None)
    head = head if isinstance(head, nn.Module) and head is not fc else None
    mult = _pool_mult(getattr(model, "global_pool", None) or getattr(head, "global_pool", None))
    hidden = getattr(model, "head_hidden_size", None)
    if hidden is None or hidden == model.num_features * mult:  # the pooled features feed the classifier
        model.num_features = width // mult
    else:
        model.num_features = _feature_width(model) or model.num_features
    if hidden is not None:
        model.head_hidden_size = width
    if head is not None and hasattr(head, "in_features") and not getattr(head, "hidden_size", None):
        head.in_features = width // _pool_mult(getattr(head, "global_pool", None))
    if head is not None and isinstance(getattr(head, "num_features", None), int):
        head.num_features = width
    return model
