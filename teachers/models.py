"""Teachers by name: any timm model or student spec, fitted to CIFAR-sized input, rebuilt from checkpoints.

A network designed for 224x224 ImageNet images meets 32x32 inputs in one of two modes:

- ``cifar`` rewrites the stem: the first convolution becomes 3x3 with stride 1, the other convolutions that
  read the image (the 1x1 branch of a RepVGG or MobileOne stem) get stride 1, and every downsampling layer
  before the first stage (timm's first ``feature_info`` level at 1/4 resolution) loses its stride (max-pools
  are removed), so the first stage sees 32x32 feature maps as in the CIFAR ResNets of He et al. (2016, "Deep
  Residual Learning for Image Recognition", section 4.2). The new first convolution starts from a fresh
  initialisation, so the teacher must be trained or fine-tuned on our data (``distill teacher``). A model
  that still cannot run on 32x32 input (a space-to-depth stem, layers that need larger maps) is refused.
- ``upsample`` keeps the model exactly as published and resizes every batch on the device to its native
  resolution (``pretrained_cfg['input_size']``, 224 for most). Models whose patch embedding fixes the input
  size (ViT, DeiT, Swin, ...) need it; it also lets an ImageNet-pretrained stem be used unchanged.

Student specs and presets (``r2_11_c8-16``, ``seed004``) are teachers too: they are CIFAR networks already,
so the mode does not apply to them. That is how the tests get teachers that build in milliseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from students import PRESETS
from students import create as create_student
from students import resolve as resolve_student
from students.checkpoint import CheckpointError, build_student, load_file, student_arch
from students.common.errors import UserError
from students.spec import SpecError, suggest

from .pruned import PRUNED_LAYERS_KEY, narrow_layers, resized_layers, sync_head_width

__all__ = [
    "MODES",
    "TeacherError",
    "build_from_arch",
    "create_teacher",
    "default_mode",
    "find_teacher_name_suggestions",
    "is_student_name",
    "load_model",
    "load_weights",
    "pruned_arch",
    "read_state_dict",
    "teacher_arch",
]

_logger = logging.getLogger(__name__)

MODES = ("cifar", "upsample")

_NAME_HINT = "pass a timm model name (see timm.list_models()) or a student spec such as r3_333_c16-32-64"


class TeacherError(UserError):
    """A teacher name, mode or weights file we cannot use; the message says how to fix it."""


# --------------------------------------------------------------------------------------------------- names


def _looks_like_spec(name: str) -> bool:
    return len(name) > 1 and name[0] == "r" and name[1].isdigit()


def is_student_name(name: str) -> bool:
    """True for a student preset (``seed000``) or a valid student spec string (``r3_333_c16-32-64``)."""
    if name in PRESETS:
        return True
    if not _looks_like_spec(name):
        return False
    try:
        resolve_student(name)
    except SpecError:
        return False
    return True


def find_teacher_name_suggestions(name: str) -> str:
    """A ' (did you mean ...?)' hint with the timm models and student presets closest to ``name``, or ''."""
    # timm already lists the presets once students registered them; the set keeps each name once.
    return suggest(name, sorted(set(timm.list_models()) | set(PRESETS)))


def _family(name: str) -> str:
    """'student' or 'timm' for a known teacher name; :class:`TeacherError` with close matches otherwise."""
    if not isinstance(name, str) or not name:
        raise TeacherError(f"empty teacher name; {_NAME_HINT}")
    if name in PRESETS:
        return "student"
    if _looks_like_spec(name):
        # No timm model name starts with r<digit>, so a malformed spec gets the spec parser's precise message.
        try:
            resolve_student(name)
        except SpecError as err:
            raise TeacherError(f"bad teacher spec: {err}") from None
        return "student"
    if timm.is_model(name):
        return "timm"
    raise TeacherError(f"unknown teacher {name!r}{find_teacher_name_suggestions(name)}; {_NAME_HINT}")


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise TeacherError(f"unknown teacher mode {mode!r}{suggest(str(mode), list(MODES))}; choose cifar or upsample")
    return mode


def _fixed_input_size(name: str) -> bool:
    """True when timm says the model only runs at its native input size (a position embedding, fixed windows)."""
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg is not None and bool(cfg.fixed_input_size)


def _needs_native_size(name: str) -> bool:
    """True for a timm model meant for its native input size: a fixed input size or a patch embedding."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return False
    first_conv = cfg.first_conv[0] if isinstance(cfg.first_conv, (tuple, list)) else cfg.first_conv
    return bool(cfg.fixed_input_size) or "patch_embed" in (first_conv or "")


def default_mode(name: str) -> str:
    """``upsample`` for models with a patch embedding or fixed input size (ViT-like), else ``cifar``.

    Decided from the name alone, without building the model. A model whose later layers turn out not to run
    on CIFAR-sized input in cifar mode (HaloNet, Inception-v4) is refused by :func:`create_teacher`. A
    patch-embedding model without a fixed input size (PVT-v2, FasterNet) may still be asked for cifar mode.
    """
    if _family(name) == "student":
        return "cifar"
    return "upsample" if _needs_native_size(name) else "cifar"


# ------------------------------------------------------------------------------------------- stem surgery


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


def _stride(module: nn.Module) -> int:
    """The largest spatial stride a leaf module applies (1 when it has none)."""
    stride = getattr(module, "stride", 1)
    if isinstance(stride, (tuple, list)):
        return max((int(s) for s in stride), default=1)
    try:
        return int(stride)
    except (TypeError, ValueError):
        return 1


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _first_conv_names(model: nn.Module) -> tuple[str, ...]:
    """The convolutions that read the image, main one first: ``pretrained_cfg['first_conv']`` (a tuple for
    multi-branch stems, e.g. RepVGG's and MobileOne's 3x3 and 1x1 branches), else the first ``nn.Conv2d``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("first_conv")
    names = (names,) if isinstance(names, str) else tuple(names or ())
    modules = dict(model.named_modules())
    convs = tuple(n for n in names if isinstance(modules.get(n), nn.Conv2d))
    if convs and convs[0] == names[0]:
        return convs
    return tuple(n for n, m in modules.items() if isinstance(m, nn.Conv2d))[:1]


def _stem_end(model: nn.Module, first_conv: str) -> str | None:
    """Where the stem ends: at the first stage, the first module in timm's ``feature_info`` whose output is 4x
    smaller than the image (ResNet's ``layer1``, EfficientNet's ``blocks.1``, DenseNet's
    ``features.denseblock1``), or at the block holding that module when it is a tap inside one (Xception's
    ``blocks.1`` for ``blocks.1.stack.act3``). None when ``feature_info`` names no such module."""
    try:
        entries = [(str(f["module"]), int(f["reduction"])) for f in getattr(model, "feature_info", None) or ()]
    except (KeyError, TypeError, ValueError):
        return None
    stage = next((module for module, reduction in entries if reduction >= 4), None)
    if not stage or stage not in dict(model.named_modules()):
        return None
    first, path = first_conv.split("."), stage.split(".")
    common = next((i for i, (a, b) in enumerate(zip(first, path)) if a != b), min(len(first), len(path)))
    # One level below the container shared with the first convolution: 'layer1', 'stages.1', 'features.9'.
    return ".".join(path[: common + 2]) if common < len(path) else None


def _stem_downsamplers(model: nn.Module, skip: tuple[str, ...], main_downsamples: bool, whole_stem: bool) -> list[str]:
    """The strided leaf layers after the first convolution (``skip`` lists the input convolutions) and before
    the end of the stem (:func:`_stem_end`).

    Leaves are walked in registration order, which is forward order in timm's CNNs. Without ``whole_stem`` or
    a usable ``feature_info`` the stem ends at the first downsampling layer after the first convolution, and
    only a max-pool there (ResNet's ``maxpool``, DenseNet's ``pool0``) belongs to it, when the first
    convolution downsampled too: pools deeper in the net belong to its stages.
    """
    end = _stem_end(model, skip[0]) if whole_stem else None
    found, seen = [], False
    for name, module in model.named_modules():
        seen = seen or name == skip[0]
        if end is not None and (name == end or name.startswith(end + ".")):
            break
        if not seen or name in skip or next(module.children(), None) is not None or _stride(module) == 1:
            continue
        if end is not None:
            found.append(name)
        else:
            return [name] if main_downsamples and isinstance(module, nn.MaxPool2d) else []
    return found


def _fresh_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A freshly initialised 3x3 stride-1 convolution with ``conv``'s channels: the CIFAR stem's first layer."""
    new = nn.Conv2d(
        conv.in_channels, conv.out_channels, 3, stride=1, padding=1, groups=conv.groups,
        bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype,
    )
    # He initialisation as timm's CNNs use; any pretrained first-layer filters were for 7x7 stride-2 views
    # of 224-pixel images, so they are not reused.
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def _keeps_size(conv: nn.Conv2d) -> bool:
    """True when ``conv`` at stride 1 keeps the feature map's size: 'same' padding, static or dynamic."""
    if "Same" in type(conv).__name__:  # timm's Conv2dSame pads for its stride at run time
        return True
    if isinstance(conv.padding, str):
        return conv.padding == "same"
    return all(2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size))


def _unstride(model: nn.Module, name: str, layer: str) -> str:
    """Make stem layer ``layer`` keep resolution; what was done, for the log."""
    module = model.get_submodule(layer)
    if isinstance(module, nn.Conv2d):
        if _keeps_size(module):
            module.stride = (1,) * len(module.stride)
            return f"{layer} stride 1"
    elif next(module.parameters(recurse=False), None) is None:  # max/average/blur pools: no weights, same channels
        _set_submodule(model, layer, nn.Identity())
        return f"removed {layer}"
    raise TeacherError(f"teacher {name} downsamples in its stem with a {type(module).__name__} ({layer}) that "
                       "cifar mode cannot remove; use --teacher-mode upsample")


def _adapt_stem(model: nn.Module, name: str, input_size: int, *, whole_stem: bool) -> None:
    """Make ``model`` keep full resolution up to its first stage: a 3x3 stride-1 first conv, every other
    convolution reading the image at stride 1, no downsampling layer in the stem (only the max-pool right
    after the first convolution without ``whole_stem``)."""
    convs = _first_conv_names(model)
    if not convs:
        raise TeacherError(f"teacher {name} has no convolution to adapt to {input_size}x{input_size} input; "
                           "use --teacher-mode upsample")
    main = model.get_submodule(convs[0])
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    channels = int((cfg.get("input_size") or (3,))[0])
    if main.in_channels != channels:  # e.g. TResNet's space-to-depth stem: 4x4 pixel blocks become channels
        raise TeacherError(f"teacher {name} rearranges the image before its first convolution {convs[0]} and "
                           f"cannot keep {input_size}x{input_size} resolution; use --teacher-mode upsample")
    downsamples = _stride(main) > 1
    changes = []
    if (main.kernel_size, main.stride, main.padding) != ((3, 3), (1, 1), (1, 1)):
        _set_submodule(model, convs[0], _fresh_conv(main))
        changes.append(f"first conv {convs[0]} {'x'.join(map(str, main.kernel_size))} stride {main.stride[0]} "
                       "-> 3x3 stride 1 (freshly initialised)")
    for layer in [*convs[1:], *_stem_downsamplers(model, convs, downsamples, whole_stem)]:
        if _stride(model.get_submodule(layer)) > 1:
            changes.append(_unstride(model, name, layer))
    _logger.info("teacher %s: cifar stem: %s", name, "; ".join(changes) or "unchanged")
    cfg.update(input_size=(channels, input_size, input_size), pool_size=None, crop_pct=1.0,
               fixed_input_size=False)
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm keeps both names for the same dict


def _check_forward(model: nn.Module, name: str, num_classes: int, input_size: int) -> None:
    """Run one ``input_size`` image through an adapted ``model`` (eval mode, no gradients), so that a model whose
    later layers need its native input size is refused now, in one line, rather than in the first batch."""
    param = next(model.parameters(), None)
    if param is None or param.device.type == "meta":  # a shapes-only build (pruned_arch): nothing to run
        return
    was_training = model.training
    x = torch.zeros(1, *model.pretrained_cfg["input_size"], dtype=param.dtype, device=param.device)
    try:
        with torch.no_grad():
            out = model.eval()(x)
        problem = None if tuple(out.shape) == (1, num_classes) else f"output shape {tuple(out.shape)}"
    except Exception as err:  # noqa: BLE001 - any layer may fail on a small input, each its own way
        problem = _first_line(err)
    finally:
        model.train(was_training)
    if problem is not None:
        raise TeacherError(f"teacher {name} does not run on {input_size}x{input_size} images in cifar mode "
                           f"({problem}); use --teacher-mode upsample")


# ----------------------------------------------------------------------------------------------- weights


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a weights-only torch file.

    Accepts a raw state dict or one wrapped as ``{"state_dict": ...}`` (our checkpoints, Lightning) or
    ``{"model": ...}`` (DeiT, many training scripts); strips a ``module.`` prefix left by DataParallel.
    """
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"teacher weights {path} do not exist; pass the path of a state_dict file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file as load_safetensors

            obj: Any = load_safetensors(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise several types for corrupt or unsafe files
        raise TeacherError(
            f"teacher weights {path} are corrupt or not a safe weights-only file ({_first_line(err)})"
        ) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise TeacherError(f"{path} holds no state_dict (a mapping of parameter names to tensors)")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier")
    if isinstance(names, str):
        return (names,)
    if names:
        return tuple(names)
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return tuple(n for n, m in model.named_modules() if head is not None and m is head)


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key.startswith(p + ".") for p in prefixes)


def _summary(keys: list[str], limit: int = 3) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_weights(model: nn.Module, path: str | Path, *, name: str, adapted_stem: bool) -> None:
    """Load a local state dict into ``model``, keeping fresh layers where the file cannot fit.

    Classifier weights of another shape (a different class count) are dropped and the head keeps its fresh
    initialisation, as timm does when it loads pretrained weights for a new ``num_classes``. With
    ``adapted_stem`` (cifar mode), first-convolution weights of another shape (ImageNet's 7x7) are dropped
    too. Every other key must match exactly: a half-loaded teacher would silently teach the wrong thing.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    droppable = _classifier_names(model)
    if adapted_stem:
        droppable += _first_conv_names(model)
    dropped, wrong_shape = [], []
    for key, value in list(state.items()):
        if key in own and own[key].shape != value.shape:
            if _under(key, droppable):
                dropped.append(key)
                del state[key]
            else:
                wrong_shape.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
    missing = [
        k for k in own
        if k not in state and k not in dropped and not _under(k, droppable) and not k.endswith("num_batches_tracked")
    ]
    kept_fresh = [k for k in own if k not in state and k not in dropped and _under(k, droppable)]
    unexpected = [k for k in state if k not in own]
    problems = []
    if wrong_shape:
        problems.append(f"shape mismatch {_summary(wrong_shape)}")
    if missing:
        problems.append(f"missing {_summary(missing)}")
    if unexpected:
        problems.append(f"unexpected {_summary(unexpected)}")
    if problems:
        raise TeacherError(
            f"weights in {path} do not fit teacher {name}: {'; '.join(problems)}; "
            "pass a state_dict saved from the same architecture"
        )
    model.load_state_dict(state, strict=False)
    if dropped or kept_fresh:
        _logger.info("teacher %s: loaded %s; kept fresh initialisation of %s (new class count or CIFAR stem)",
                     name, path, _summary(dropped + kept_fresh, limit=6))
    else:
        _logger.info("teacher %s: loaded all weights from %s", name, path)


# ----------------------------------------------------------------------------------------------- factory


def _build_timm(name: str, num_classes: int, pretrained: bool) -> nn.Module:
    if pretrained:
        _logger.info("teacher %s: fetching pretrained weights (from the local cache or the network)", name)
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes)
        except Exception as err:  # offline: huggingface_hub, urllib and timm raise many different types
            _logger.debug("pretrained weights for %s failed to load", name, exc_info=True)
            raise TeacherError(
                f"pretrained weights for {name} could not be downloaded ({_first_line(err)}); pass "
                "--teacher-weights FILE with a local timm/torchvision state_dict, or train one with distill teacher"
            ) from None
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    except (RuntimeError, ValueError) as err:  # e.g. an unknown pretrained tag in 'resnet50.bad_tag'
        raise TeacherError(f"could not build teacher {name}: {_first_line(err)}") from None


# Version of the cifar-mode stem surgery, recorded in checkpoints (teacher_arch): 1 adapted only the input
# convolutions and the max-pool after them; 2 keeps full resolution through the whole stem. A checkpoint
# written under version 1 is rebuilt with version 1, so its weights keep computing what they computed.
CIFAR_STEM_VERSION = 2


def _build_cifar(name: str, num_classes: int, pretrained: bool, input_size: int, stem_version: int) -> nn.Module:
    """A timm model in cifar mode: its whole stem adapted (:func:`_adapt_stem`), or, where that does not run
    (NASNet's stem cells feed later cells at two resolutions) or ``stem_version`` is 1, only its input
    convolutions and stem max-pool."""
    model = _build_timm(name, num_classes, pretrained)
    try:
        if stem_version < 2:
            raise TeacherError(f"cifar stem version {stem_version} (recorded in the checkpoint)")
        _adapt_stem(model, name, input_size, whole_stem=True)
        _check_forward(model, name, num_classes, input_size)
        return model
    except TeacherError as err:
        _logger.info("teacher %s: %s; adapting only its first convolutions and stem max-pool", name, err)
    model = _build_timm(name, num_classes, pretrained)  # the surgery above may have left it half changed
    _adapt_stem(model, name, input_size, whole_stem=False)
    _check_forward(model, name, num_classes, input_size)
    return model


def create_teacher(
    name: str,
    num_classes: int,
    *,
    mode: str | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    input_size: int = 32,
    stem_version: int = CIFAR_STEM_VERSION,
) -> nn.Module:
    """Build a teacher network by timm model name or student spec.

    Args:
        name: any timm model name (``resnet50``, ``convnext_tiny``, ``resnet50.a1_in1k``) or a student
            preset/spec (``seed004``, ``r2_11_c8-16``).
        num_classes: classifier outputs.
        mode: ``cifar`` (adapt the stem to ``input_size`` input) or ``upsample`` (keep the model, resize the
            input on the device; see :func:`teachers.freeze_teacher`); None picks :func:`default_mode`.
            Ignored for students, which are CIFAR networks already.
        pretrained: load timm's pretrained weights (downloads when not cached); the classifier is
            re-initialised for ``num_classes`` and, in cifar mode, so is the new first convolution.
        weights: a local state dict (``.safetensors`` or a torch file) in timm's or torchvision's layout,
            loaded with the same head and stem rules (see :func:`load_weights`).
        input_size: side of the square training images in pixels, recorded for cifar mode.
        stem_version: which cifar-mode stem surgery to apply (:data:`CIFAR_STEM_VERSION`; a checkpoint's
            ``cifar_stem``); the default is the current one.

    Raises:
        TeacherError: unknown name or mode, a model that cannot run on ``input_size`` images in cifar mode
            (a fixed input size, a space-to-depth stem, layers that need larger feature maps), weights that
            cannot be had or do not fit.
    """
    if num_classes < 1:
        raise TeacherError(f"a teacher needs at least 1 class, got num_classes={num_classes}")
    if input_size < 1:
        raise TeacherError(f"input_size must be a positive number of pixels, got {input_size}")
    if pretrained and weights is not None:
        raise TeacherError("pass either pretrained weights or a weights file for the teacher, not both")
    family = _family(name)
    if mode is not None:
        _check_mode(mode)
    if family == "student":
        if pretrained:
            raise TeacherError(
                f"student {name} has no pretrained weights; "
                "pass --teacher-weights FILE or train it with distill teacher"
            )
        if mode == "upsample":
            _logger.info("teacher %s is a CIFAR network already; teacher mode 'upsample' does not apply", name)
        model: nn.Module = create_student(name, num_classes)
        adapted = False
    else:
        mode = mode or default_mode(name)
        if mode == "cifar" and _fixed_input_size(name):
            raise TeacherError(
                f"teacher {name} needs its fixed {_native_size(name)}x{_native_size(name)} input size and cannot "
                f"run on {input_size}x{input_size} images; use --teacher-mode upsample"
            )
        adapted = mode == "cifar"
        if adapted:
            model = _build_cifar(name, num_classes, pretrained, input_size, stem_version)
        else:
            model = _build_timm(name, num_classes, pretrained)
    if weights is not None:
        load_weights(model, weights, name=name, adapted_stem=adapted)
    return model


# ------------------------------------------------------------------------------------ checkpoint round trip


def teacher_arch(name: str, num_classes: int, mode: str | None = None, input_size: int = 32) -> dict[str, Any]:
    """The architecture description a checkpoint stores to rebuild this teacher with :func:`build_from_arch`.

    timm models: ``{"family": "timm", "name", "mode", "num_classes", "input_size", "resize_to"}`` where
    ``input_size`` is the side of the training images and ``resize_to`` the native side an upsample-mode
    teacher sees (None in cifar mode); student specs and presets: :func:`students.student_arch` of the
    built student (``"family": "student"``).
    """
    if _family(name) == "student":
        return student_arch(create_student(name, num_classes))
    mode = _check_mode(mode) if mode is not None else default_mode(name)
    return {
        "family": "timm",
        "name": name,
        "mode": mode,
        "num_classes": int(num_classes),
        "input_size": int(input_size),
        "resize_to": _native_size(name) if mode == "upsample" else None,
        **({"cifar_stem": CIFAR_STEM_VERSION} if mode == "cifar" else {}),
    }


def _native_size(name: str) -> int:
    """The square side timm's pretrained config gives for ``name`` (224 when it says nothing)."""
    cfg = timm.models.get_pretrained_cfg(name)
    size = cfg.input_size if cfg is not None and cfg.input_size else (3, 224, 224)
    return int(size[-1])


def pruned_arch(model: nn.Module, arch: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture description of ``model``, a timm teacher built from ``arch`` and then pruned: ``arch``
    plus the widths of every narrowed layer (see :mod:`teachers.pruned`), so that :func:`build_from_arch`
    rebuilds it and :func:`load_model` loads its weights. A student gets :func:`students.student_arch`.

    Raises :class:`~teachers.pruned.PrunedModelError` naming the first layer whose new shape widths cannot
    describe (only convolutions, linear and normalisation layers can be narrowed).
    """
    if arch.get("family") == "student":
        return student_arch(model)  # type: ignore[arg-type]
    if arch.get("family") != "timm":
        raise TeacherError(f"cannot record a pruned {arch.get('family')!r} model; only students and timm models")
    base = {k: v for k, v in arch.items() if k != PRUNED_LAYERS_KEY}
    layers = resized_layers(model, _unpruned(base), model_name=str(base.get("name")))
    return {**base, PRUNED_LAYERS_KEY: layers} if layers else base


def _unpruned(arch: Mapping[str, Any]) -> nn.Module:
    """The model ``arch`` describes, for its shapes only: on the meta device (no memory, no initialisation, no
    random numbers drawn), or, for a model whose construction reads tensor values, on the CPU."""
    try:
        with torch.device("meta"):
            return build_from_arch(arch)
    except Exception:  # noqa: BLE001 - e.g. ``.item()`` on a meta tensor; a real build raises real errors
        with torch.random.fork_rng(devices=[]):
            return build_from_arch(arch)


def build_from_arch(arch: Mapping[str, Any]) -> nn.Module:
    """Rebuild an untrained model, student or timm teacher, from its checkpoint architecture description."""
    if not isinstance(arch, Mapping):
        raise CheckpointError(f"architecture in checkpoint is a {type(arch).__name__}, not a mapping")
    family = arch.get("family")
    if family == "student":
        return build_student(arch)
    if family == "timm":
        try:
            name, mode = str(arch["name"]), str(arch["mode"])
            num_classes, input_size = int(arch["num_classes"]), int(arch.get("input_size", 32))
            stem_version = int(arch.get("cifar_stem", 1))  # checkpoints from before versioning: version 1
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"teacher architecture in checkpoint is invalid: bad or missing {err}") from None
        # The stem surgery's log lines ("freshly initialised") would mislead here: the checkpoint's weights follow.
        level = _logger.level
        _logger.setLevel(logging.WARNING)
        try:
            model = create_teacher(name, num_classes, mode=mode, input_size=input_size, stem_version=stem_version)
        finally:
            _logger.setLevel(level)
        if PRUNED_LAYERS_KEY in arch:  # a pruned timm model: narrow the layers pruning narrowed
            sync_head_width(narrow_layers(model, arch[PRUNED_LAYERS_KEY]))
        return model
    if family == "custom":  # written by distill.fit for a module of the user's own
        raise CheckpointError(
            f"the checkpoint holds a custom module ({arch.get('class', 'unknown class')}) that cannot be rebuilt "
            "from its name; build it in Python and load the weights: "
            "model.load_state_dict(torch.load(path, weights_only=True)['state_dict'])"
        )
    raise CheckpointError(f"unknown architecture family {family!r} in checkpoint (expected 'student' or 'timm')")


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load any of our checkpoints, student or teacher: the rebuilt model in eval mode and the checkpoint."""
    ckpt = load_file(path)
    if "arch" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} has no architecture or weights; pass a file written by distill or prune")
    model = build_from_arch(ckpt["arch"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"weights in {path} do not fit its recorded architecture: {_first_line(err, 200)}"
        ) from None
    model.eval()
    return model, ckpt
