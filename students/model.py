"""The CIFAR-style residual network behind every student spec, honouring timm's classifier contract."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .spec import SpecError, StudentSpec, format_spec, parse_spec

__all__ = ["BasicBlock", "CifarResNet", "CIFAR10_MEAN", "CIFAR10_STD", "default_cfg"]

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
    ``forward_head``, ``get_classifier``, ``reset_classifier`` and ``pretrained_cfg``.

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
        self.feature_info = [{"num_chs": stem_width, "reduction": 2 if self.spec.stem_pool else 1, "module": "stem"}]
        reduction = self.feature_info[0]["reduction"]
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
            reduction *= 2 if i > 0 else 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": actual_in, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = actual_in
        self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.head_drop = nn.Dropout(self.drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = default_cfg(num_classes)
        self.default_cfg = self.pretrained_cfg
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

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

    def extra_repr(self) -> str:
        return f"spec={self.spec_name}"
