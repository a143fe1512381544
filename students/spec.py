"""Student spec strings: a compact, canonical name for every CIFAR-style residual network.

Grammar (suffixes optional, in this order, defaults omitted in the canonical form)::

    rN_B1B2..BN [_cC1-C2-..-CN] [_fF1F2..FN] [_kK] [_sS] [_mp] [_dP]

    rN        N stages (1..6); stride 2 at the first block of stages 2..N
    B1..BN    basic blocks per stage, one digit each (1..9)
    _c        output channels per stage            (default: DEFAULT_CHANNELS[N])
    _f        convolution kernel per stage, odd    (default: 3 everywhere)
    _k        projection-shortcut kernel, odd      (default: 1)
    _s        stem width                           (default: the first stage's channels)
    _mp       3x3 stride-2 max-pool after the stem (default: off)
    _d        dropout probability before the head  (default: 0, off)

``r4_3323`` is seed report 000's best model: 4 stages of 3, 3, 2, 3 blocks with 64, 128, 128, 256
channels, 4,935,242 parameters for 10 classes.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from .errors import UserError

__all__ = ["DEFAULT_CHANNELS", "SpecError", "StudentSpec", "parse_spec", "format_spec", "WEIGHT_INITS",
           "DEFAULT_WEIGHT_INIT"]

# Default channels per stage for each stage count. N=4 is seed 000's best model and N=3 seed 003's; the
# others keep the same shape: width doubles while the spatial size halves, capped at 256 so the default
# network stays under 5M parameters with one block per stage.
DEFAULT_CHANNELS: dict[int, tuple[int, ...]] = {
    1: (64,),
    2: (64, 128),
    3: (64, 128, 256),
    4: (64, 128, 128, 256),
    5: (32, 64, 128, 128, 256),
    6: (32, 64, 64, 128, 128, 256),
}
MAX_STAGES = max(DEFAULT_CHANNELS)

_EXAMPLE = "e.g. r4_3323 or r3_443_c64-128-256_d0.4"
_HEAD_RE = re.compile(r"^r([0-9]{1,4})$")


# How a student's convolutions start: kaiming normal over fan-out (He et al. 2015, torchvision's ResNets),
# PyTorch's own default (kaiming uniform, a=sqrt(5)), or kaiming over fan-in. The default is PyTorch's: at CPU
# scale (benchmarks/init_ablation.py, 2 seeds, docs/RESULTS.md) the 78k student alone reached 73.09% with it at
# 5 epochs against 71.85% with kaiming fan-out, the default before 2026-12-08, and 78.26% against 78.23% at 10. Stated here, without torch, so
# settings and help texts read them too.
WEIGHT_INITS = ("kaiming-fan-out", "torch-default", "kaiming-fan-in")
DEFAULT_WEIGHT_INIT = "torch-default"

class SpecError(UserError):
    """A student spec string that does not follow the grammar; the message says what is wrong."""


@dataclass(frozen=True)
class StudentSpec:
    """A parsed student architecture. Use :func:`parse_spec` to build one from a string."""

    blocks: tuple[int, ...]
    channels: tuple[int, ...] | None = None
    kernels: tuple[int, ...] | None = None
    skip_kernel: int = 1
    stem_width: int | None = None
    stem_pool: bool = False
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.blocks)
        if not 1 <= n <= MAX_STAGES:
            raise SpecError(f"a student has 1 to {MAX_STAGES} stages, not {n} ({_EXAMPLE})")
        if any(not 1 <= b <= 9 for b in self.blocks):
            raise SpecError(f"blocks per stage must be 1..9, got {list(self.blocks)}")
        if self.channels is not None:
            if len(self.channels) != n:
                raise SpecError(f"{n} stages need {n} channel widths, got {len(self.channels)}")
            if any(c < 1 for c in self.channels):
                raise SpecError(f"channel widths must be positive, got {list(self.channels)}")
        if self.kernels is not None:
            if len(self.kernels) != n:
                raise SpecError(f"{n} stages need {n} kernel sizes, got {len(self.kernels)}")
            if any(k < 1 or k % 2 == 0 for k in self.kernels):
                raise SpecError(f"kernel sizes must be odd, got {list(self.kernels)}")
        if self.skip_kernel < 1 or self.skip_kernel % 2 == 0:
            raise SpecError(f"skip kernel must be odd, got {self.skip_kernel}")
        if self.stem_width is not None and self.stem_width < 1:
            raise SpecError(f"stem width must be positive, got {self.stem_width}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise SpecError(f"dropout must be in [0, 1), got {self.drop_rate}")

    @property
    def num_stages(self) -> int:
        return len(self.blocks)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return self.channels if self.channels is not None else DEFAULT_CHANNELS[self.num_stages]

    @property
    def stage_kernels(self) -> tuple[int, ...]:
        return self.kernels if self.kernels is not None else (3,) * self.num_stages

    @property
    def stem_channels(self) -> int:
        return self.stem_width if self.stem_width is not None else self.stage_channels[0]

    def canonical(self) -> "StudentSpec":
        """The same architecture with every default value written as ``None``/default."""
        channels = None if self.stage_channels == DEFAULT_CHANNELS[self.num_stages] else self.channels
        kernels = None if self.stage_kernels == (3,) * self.num_stages else self.kernels
        stem = None if self.stem_channels == self.stage_channels[0] else self.stem_width
        return StudentSpec(self.blocks, channels, kernels, self.skip_kernel, stem, self.stem_pool, self.drop_rate)

    def __str__(self) -> str:
        return format_spec(self)


def format_spec(spec: StudentSpec) -> str:
    """The canonical string of ``spec``: ``format_spec(parse_spec(s)) == s`` for every canonical ``s``."""
    spec = spec.canonical()
    parts = [f"r{spec.num_stages}", "".join(map(str, spec.blocks))]
    if spec.channels is not None:
        parts.append("c" + "-".join(map(str, spec.channels)))
    if spec.kernels is not None:
        parts.append("f" + "".join(map(str, spec.kernels)))
    if spec.skip_kernel != 1:
        parts.append(f"k{spec.skip_kernel}")
    if spec.stem_width is not None:
        parts.append(f"s{spec.stem_width}")
    if spec.stem_pool:
        parts.append("mp")
    if spec.drop_rate:
        parts.append(f"d{spec.drop_rate:g}")
    return "_".join(parts)


def _digits(text: str, what: str, n: int) -> tuple[int, ...]:
    if not (text.isascii() and text.isdigit()):
        raise SpecError(f"{what} must be one digit per stage, got {text[:20]!r} ({_EXAMPLE})")
    if len(text) != n:
        raise SpecError(f"{n} stages need {n} {what} digits, got {len(text)} ({text[:20]!r})")
    return tuple(int(c) for c in text)


_MAX_DIGITS = 9  # a width or kernel of a billion is already far beyond any buildable student


def _positive_int(text: str, what: str) -> int:
    digits = text.lstrip("0")
    if not (text.isascii() and text.isdigit()) or not digits:
        raise SpecError(f"{what} must be a positive whole number, got {text[:20]!r}")
    if len(digits) > _MAX_DIGITS:
        raise SpecError(f"{what} {text[:12]}... has more than {_MAX_DIGITS} digits; no student is that wide")
    return int(digits)


def parse_spec(text: str) -> StudentSpec:
    """Parse a spec string such as ``r4_3323_c64-128-128-256``; raise :class:`SpecError` when malformed."""
    if not isinstance(text, str) or not text:
        raise SpecError(f"empty student spec ({_EXAMPLE})")
    shown = repr(text) if len(text) <= 80 else repr(text[:77] + "...")  # error messages stay one short line
    head, *rest = text.split("_")
    match = _HEAD_RE.match(head)
    if not match or not rest:
        raise SpecError(f"{shown} is not a student spec: expected rN_B1..BN ({_EXAMPLE})")
    n = int(match.group(1))
    if not 1 <= n <= MAX_STAGES:
        raise SpecError(f"{shown}: a student has 1 to {MAX_STAGES} stages, not {n} ({_EXAMPLE})")
    blocks_text, *suffixes = rest
    if not blocks_text:
        raise SpecError(f"{shown}: no block counts after 'r{n}_'; write one digit per stage ({_EXAMPLE})")
    try:
        blocks = _digits(blocks_text, "block-count", n)
        fields: dict[str, object] = {}
        order = "cfksmd"
        last = -1
        for part in suffixes:
            key = "m" if part == "mp" else part[:1]
            if key not in order or (key == "m" and part != "mp"):
                raise SpecError(f"unknown suffix '_{part}' (known: _c, _f, _k, _s, _mp, _d)")
            if order.index(key) <= last:
                raise SpecError(f"suffix '_{part}' is repeated or out of order (order: _c _f _k _s _mp _d)")
            last = order.index(key)
            value = part[1:]
            if key == "c":
                widths = value.split("-")
                if len(widths) != n:
                    raise SpecError(f"{n} stages need {n} channel widths, got {len(widths)} ('_{part}')")
                fields["channels"] = tuple(_positive_int(w, "a channel width") for w in widths)
            elif key == "f":
                fields["kernels"] = _digits(value, "kernel", n)
            elif key == "k":
                fields["skip_kernel"] = _positive_int(value, "the skip kernel")
            elif key == "s":
                fields["stem_width"] = _positive_int(value, "the stem width")
            elif key == "m":
                fields["stem_pool"] = True
            elif key == "d":
                try:
                    fields["drop_rate"] = float(value)
                except ValueError:
                    raise SpecError(f"dropout must be a number, got {value!r} ('_{part}')") from None
                if not 0.0 < fields["drop_rate"] < 1.0:  # type: ignore[operator]
                    raise SpecError(f"dropout must be in (0, 1), got {value} ('_{part}')")
        return StudentSpec(blocks, **fields)  # type: ignore[arg-type]
    except SpecError as err:
        raise SpecError(f"{shown}: {err}") from None


def suggest(name: str, candidates: list[str], n: int = 3) -> str:
    """A ' (did you mean ...?)' hint listing close matches of ``name``, or ''."""
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""
