"""The preset students: the architectures of the five course reports the project grew from (no torch needed)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    """A named student: its spec and the seed report it reproduces."""

    name: str
    spec: str
    source: str
    note: str = ""


# Exact parameter counts (10 classes) are asserted in tests/test_students.py.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("seed000", "r4_3323", "report 000 (Mehta, Sinha, Singh)", "best model, 4,935,242 params"),
        Preset("seed001", "r4_1111_c64-128-256-512", "report 001 (Li, Qin, Wang)", "ResNet-18 cut to 1 block/stage"),
        Preset(
            "seed002", "r4_2433_c32-64-128-256_f5533_mp", "report 002 (Zhang, Hou, Zhang)",
            "5x5 kernels in stages 1-2, stem 32 + max-pool (the report says it dropped the pool)",
        ),
        Preset("seed003", "r3_443_d0.4", "report 003 (Pandya, Bhale, Nayak)", "dropout 0.4 before the head"),
        Preset(
            "seed004", "r3_333_c16-32-64", "report 004 (Vijaykumar)",
            "ResNet-20 v1 with conv+BN projections (Keras original: 273,066)",
        ),
    )
}
