"""Shared plumbing for the command-line tools: rich consoles, logging and one-line errors.

Only CLI modules import this; library code logs through ``logging`` and raises :class:`UserError`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import warnings
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from .errors import UserError

__all__ = ["ArgumentParser", "console", "err_console", "cli_entry", "setup_logging", "EXIT_USAGE"]

EXIT_USAGE = 2  # same status argparse uses for bad arguments

# Pipes and logs get wide tables instead of rich's 80-column default; a terminal keeps its own width.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and where to look, not the whole usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        err_console.print(f"[bold red]error:[/] {escape(self.prog)}: {escape(message)} (see {escape(self.prog)} --help)",
                          soft_wrap=True)
        raise SystemExit(EXIT_USAGE)


def setup_logging(verbose: bool = False) -> None:
    """Route library logging through rich; hide third-party deprecation noise unless ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        # Progress and information go to stdout; stderr carries only warnings and the one-line error.
        handlers=[RichHandler(console=console, show_path=verbose, show_time=False, markup=False)],
        force=True,
    )
    for noisy in ("fvcore", "iopath", "timm", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")


def cli_entry(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a CLI ``main(argv)`` so bad input prints one clear line and exits 2, never a traceback."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return int(main(argv) or 0)
        except UserError as err:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
            return getattr(err, "exit_code", EXIT_USAGE)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            return 130

    return wrapper


def run(main: Callable[[Sequence[str] | None], int]) -> None:
    """Console-script entry point: ``sys.exit(main(sys.argv[1:]))``."""
    sys.exit(main(sys.argv[1:]))
