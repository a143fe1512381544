"""``students``: list the preset students and show the cost of any spec.

    students list
    students show r4_3323 [--num-classes 10] [--max-params 5M] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from .common.console import ArgumentParser, cli_entry, console, run, setup_logging
from .common.errors import UserError
from .common.sizes import format_count, parse_count
from .spec import format_spec

# Names that need torch, timm or fvcore (.cost, .registry) are imported inside the commands, so that
# `students --help` answers without loading them (tests/test_first_hour.py checks it).

MAX_INPUT_SIZE = 1024  # pixels; students are built for 32x32 images


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="students", description="CIFAR-style residual students under 5M parameters.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the preset students with parameters and MACs")
    show = sub.add_parser("show", help="per-stage parameters and MACs of a spec or preset")
    show.add_argument("spec", help="spec string (e.g. r4_3323_c64-128-128-256) or preset name (seed000)")
    show.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default: 10)")
    show.add_argument("--input-size", type=int, default=32, help="square input side in pixels (default: 32)")
    show.add_argument("--max-params", default=None, help="fail if the student is over this size, e.g. 5M")
    show.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser


def _list() -> None:
    from rich.table import Table

    from .analytic import spec_num_macs, spec_num_params
    from .presets import PRESETS
    from .spec import parse_spec

    # Counted from the specs with integers (equal to fvcore's counts of the built models, tested): no torch.
    table = Table(title="Preset students (10 classes, 3x32x32 input)")
    table.add_column("name")
    table.add_column("spec")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    table.add_column("source")
    table.add_column("note")
    for preset in PRESETS.values():
        spec = parse_spec(preset.spec)
        table.add_row(preset.name, preset.spec, f"{spec_num_params(spec):,}", format_count(spec_num_macs(spec)),
                      preset.source, preset.note)
    console.print(table)
    console.print("MACs: fused multiply-adds per image, as fvcore counts them (FLOPs = 2 x MACs).")


def _show(args: argparse.Namespace) -> None:
    from rich.table import Table

    from .cost import cost_report
    from .registry import PRESETS, create, resolve

    if args.num_classes < 1:
        raise UserError(f"--num-classes must be at least 1, got {args.num_classes}")
    if not 1 <= args.input_size <= MAX_INPUT_SIZE:  # the cost is measured on a real input of this size
        raise UserError(f"--input-size must be 1..{MAX_INPUT_SIZE} pixels, got {args.input_size}")
    max_params = parse_count(args.max_params, "--max-params") if args.max_params else None
    spec = resolve(args.spec)
    model = create(spec, num_classes=args.num_classes, max_params=max_params)
    report = cost_report(model, (3, args.input_size, args.input_size))
    if args.json:
        console.print_json(json.dumps({"spec": format_spec(spec), **report.to_dict()}))
        return
    title = format_spec(spec) + (f"  (preset {args.spec})" if args.spec in PRESETS else "")
    table = Table(title=f"{title}: {args.num_classes} classes, input 3x{args.input_size}x{args.input_size}")
    for col, justify in (("part", "left"), ("blocks", "right"), ("out channels", "right"), ("out size", "right"),
                         ("params", "right"), ("MACs", "right"), ("FLOPs", "right"), ("% MACs", "right")):
        table.add_column(col, justify=justify)
    for stage in report.stages:
        blocks = ""
        if stage.name.startswith("stages."):
            blocks = str(spec.blocks[int(stage.name.split(".")[1])])
        size = f"{stage.out_size[0]}x{stage.out_size[1]}" if stage.out_size else ""
        share = 100.0 * stage.macs / report.macs if report.macs else 0.0
        table.add_row(stage.name, blocks, str(stage.out_channels or ""), size, f"{stage.num_params:,}",
                      f"{stage.macs:,}", f"{stage.flops:,}", f"{share:.1f}")
    table.add_section()
    table.add_row("total", str(sum(spec.blocks)), "", "", f"{report.num_params:,}", f"{report.macs:,}",
                  f"{report.flops:,}", "100.0")
    console.print(table)
    console.print(
        f"params: {report.num_params:,} ({report.num_trainable:,} trainable) | "
        f"MACs: {format_count(report.macs)} | FLOPs: {format_count(report.flops)} (1 MAC = 2 FLOPs, per image)"
    )
    skipped = ", ".join(f"{op} x{n}" for op, n in sorted(report.skipped_ops.items())) or "none"
    console.print(f"operators fvcore skipped (not counted): {skipped}")


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "list":
        _list()
    else:
        _show(args)
    return 0


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
