"""The CIFAR-style residual network behind every student spec, honouring timm's classifier contract."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.models._features import feature_take_indices
from torch import nn

from .spec import DEFAULT_WEIGHT_INIT, WEIGHT_INITS, SpecError, StudentSpec, format_spec, parse_spec

__all__ = ["BasicBlock", "CifarResNet", "CIFAR10_MEAN", "CIFAR10_STD", "default_cfg", "WEIGHT_INITS", "DEFAULT_WEIGHT_INIT"]

# Per-channel statistics of the CIFAR-10 training set, as fractions of 255.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def default_cfg(num_classes: int = 10) -> dict:
    """timm's ``pretrained_cfg`` for a student: CIFAR input size and statistics, no downloadable weights."""
    return {
        "url": "",
        "num_classes": num_classes,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "first_conv": "stem.conv",
        "classifier": "fc",
        "architecture": "cifar_resnet",
    }


def _take_indices(num_levels: int, indices: int | list[int] | tuple[int, ...] | None) -> tuple[list[int], int]:
    """timm's ``feature_take_indices``, with a ValueError naming ``indices`` instead of an AssertionError."""
    try:
        return feature_take_indices(num_levels, indices)
    except (AssertionError, TypeError) as err:
        raise ValueError(
            f"indices={indices!r} do not select feature levels of a student with {num_levels} levels "
            f"(0 = stem, 1..{num_levels - 1} = stages): {err}"
        ) from None



class BasicBlock(nn.Module):
    """Two KxK convolutions with BatchNorm and a skip link (He et al., 2016, "Deep Residual Learning").

    ``projection`` adds a conv + BN shortcut; it is fixed by the nominal architecture (stride or width
    change), so a pruned block keeps its structure even when its widths happen to match again.
    """

    def __init__(
        self, in_chs: int, mid_chs: int, out_chs: int, *, stride: int, kernel: int, skip_kernel: int, projection: bool
    ) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(in_chs, mid_chs, kernel, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_chs, out_chs, kernel, stride=1, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        if projection:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, skip_kernel, stride=stride, padding=skip_kernel // 2, bias=False),
                nn.BatchNorm2d(out_chs),
            )
        else:
            if in_chs != out_chs or stride != 1:
                raise SpecError(f"identity shortcut needs equal widths and stride 1, got {in_chs}->{out_chs}")
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class Stem(nn.Module):
    """3x3 stride-1 convolution, BN, ReLU and an optional 3x3 stride-2 max-pool."""

    def __init__(self, in_chans: int, width: int, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


class CifarResNet(nn.Module):
    """A residual network for 32x32 images named by a spec string (see :mod:`students.spec`).

    Follows timm's classifier contract: ``num_classes``, ``num_features``, ``forward_features``,
    ``forward_head``, ``get_classifier``, ``reset_classifier`` and ``pretrained_cfg``; and its feature
    contract: ``feature_info`` (the stem, then one entry per stage), ``forward_intermediates`` and
    ``prune_intermediate_layers``, so ``timm.create_model(spec, features_only=True, out_indices=...)`` works.

    Args:
        spec: a spec string or :class:`StudentSpec`.
        num_classes: classifier outputs; 0 gives a model that returns pooled features.
        in_chans: input channels.
        drop_rate: dropout before the head; overrides the spec's ``_d`` when given (timm's keyword).
        widths: output channels per convolution by module name (``stem.conv``, ``stages.0.1.conv1``, ...),
            as recorded from a pruned model; missing names take the spec's nominal width.
    """

    def __init__(
        self,
        spec: str | StudentSpec = "r4_3323",
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float | None = None,
        widths: Mapping[str, int] | None = None,
        global_pool: str = "avg",
        weight_init: str = DEFAULT_WEIGHT_INIT,
        zero_init_last: bool = False,
        **kwargs: object,
    ) -> None:
        super().__init__()
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        kwargs.pop("cache_dir", None)
        kwargs.pop("drop_path_rate", None)  # accepted for timm tooling; these nets have no stochastic depth
        if kwargs:
            raise TypeError(f"unexpected arguments for CifarResNet: {sorted(kwargs)}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.spec = parse_spec(spec) if isinstance(spec, str) else spec
        self.spec_name = format_spec(self.spec)
        widths = dict(widths or {})
        self.drop_rate = self.spec.drop_rate if drop_rate is None else float(drop_rate)
        self.num_classes = num_classes
        self.global_pool = global_pool

        stem_width = widths.get("stem.conv", self.spec.stem_channels)
        self.stem = Stem(in_chans, stem_width, self.spec.stem_pool)
        nominal_in, actual_in = self.spec.stem_channels, stem_width
        stages = []
        for i, (n_blocks, chs, kernel) in enumerate(
            zip(self.spec.blocks, self.spec.stage_channels, self.spec.stage_kernels)
        ):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                name = f"stages.{i}.{j}"
                mid = widths.get(f"{name}.conv1", chs)
                out = widths.get(f"{name}.conv2", chs)
                projection = stride != 1 or nominal_in != chs
                try:
                    block = BasicBlock(
                        actual_in, mid, out, stride=stride, kernel=kernel,
                        skip_kernel=self.spec.skip_kernel, projection=projection,
                    )
                except SpecError as err:
                    raise SpecError(f"recorded widths do not fit {self.spec_name} at {name}: {err}") from None
                blocks.append(block)
                nominal_in, actual_in = chs, out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = actual_in
        self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.head_drop = nn.Dropout(self.drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = default_cfg(num_classes)
        self.default_cfg = self.pretrained_cfg
        self._init_weights(weight_init, zero_init_last)

    def _init_weights(self, scheme: str, zero_init_last: bool) -> None:
        """Convolutions per ``scheme`` (:data:`WEIGHT_INITS`), BatchNorm at 1 and 0, the classifier as PyTorch
        makes it; with ``zero_init_last`` the last BatchNorm of every residual block starts at 0 (Goyal et al.
        2017), so each block starts as its shortcut."""
        if scheme not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {', '.join(WEIGHT_INITS)}, got {scheme!r}")
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and scheme != "torch-default":  # torch-default: as nn.Conv2d made it
                mode = "fan_out" if scheme == "kaiming-fan-out" else "fan_in"
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    @property
    def feature_info(self) -> list[dict]:
        """timm's feature description: ``num_chs``, ``reduction`` (input pixels per feature pixel), ``module``.

        Index 0 is the stem's output (after its max-pool, if any), index ``i`` the output of stage ``i - 1``.
        Read from the live modules, so a student pruned in place (torch-pruning) reports its real widths.
        """
        reduction = 2 if self.spec.stem_pool else 1
        info = [{"num_chs": self.stem.conv.out_channels, "reduction": reduction, "module": "stem"}]
        for i, stage in enumerate(self.stages):
            reduction *= 2 if i > 0 else 1
            info.append({"num_chs": stage[-1].conv2.out_channels, "reduction": reduction, "module": f"stages.{i}"})
        return info

    @property
    def widths(self) -> dict[str, int]:
        """Output channels of every convolution by module name: what a checkpoint records after pruning."""
        return {name: m.out_channels for name, m in self.named_modules() if isinstance(m, nn.Conv2d)}

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` outputs (0 removes it)."""
        if global_pool is not None and global_pool != self.global_pool:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
            self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
            self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.num_classes = num_classes
        device = next(self.parameters()).device
        self.fc = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}
        self.default_cfg = self.pretrained_cfg

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.pool(x))
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The final feature map and the feature maps at ``indices`` of :attr:`feature_info`, as timm's CNNs.

        Args:
            x: input images, N x C x H x W.
            indices: None for every level, an int ``n`` for the last ``n``, or a sequence of indices
                (negative ones count from the end).
            norm: accepted for timm's interface; these networks have no final norm layer.
            stop_early: stop after the deepest requested level (the returned final map is then that level's).
            output_fmt: only ``"NCHW"``.
            intermediates_only: return only the list of intermediate maps.

        Returns:
            ``(final, intermediates)``, where ``forward_head(final)`` gives the logits, or ``intermediates``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = _take_indices(len(self.stages) + 1, indices)
        intermediates = []
        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        stages = self.stages[:max_index] if stop_early else self.stages
        for i, stage in enumerate(stages, start=1):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] | tuple[int, ...] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the deepest level in ``indices`` (and the head), as timm's CNNs do.

        Returns the absolute indices to take, for :meth:`forward_intermediates`. ``prune_norm`` is accepted
        for timm's interface (there is no final norm layer).
        """
        take_indices, max_index = _take_indices(len(self.stages) + 1, indices)
        prune_end = max_index < len(self.stages)
        self.stages = self.stages[:max_index]
        if prune_end:
            # the features now end at the last kept level; a head sized for the old final features goes too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def extra_repr(self) -> str:
        return f"spec={self.spec_name}"
