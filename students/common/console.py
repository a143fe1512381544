"""Shared plumbing for the command-line tools: rich consoles, logging and one-line errors.

Only CLI modules import this; library code logs through ``logging`` and raises :class:`UserError`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during work that can be continued: the message says how."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it stops as Ctrl-C does (files whole, the lock released)."""


@contextlib.contextmanager
def resumable(command: str, *, sigterm: bool = True) -> Iterator[None]:
    """Around a run's training: Ctrl-C (SIGINT) and SIGTERM stop it with one line naming ``command``, the
    exact command that continues it (exit 130 and 143). ``sigterm`` False leaves SIGTERM alone (under
    torchrun, which stops workers with it, :mod:`distill.dist` handles it); in a thread other than the main
    one no handler can be set."""
    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated()

    install = sigterm and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if install else None
    try:
        yield
    except _Terminated:
        raise Interrupted(f"terminated (SIGTERM); continue with: {command}", exit_code=143) from None
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; continue with: {command}") from None
    finally:
        if install:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def cli_entry(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a CLI ``main(argv)`` so bad input prints one clear line and exits 2, never a traceback."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return int(main(argv) or 0)
        except UserError as err:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
            return getattr(err, "exit_code", EXIT_USAGE)
        except KeyboardInterrupt as err:
            err_console.print(f"[yellow]{escape(str(err)) or 'interrupted'}[/]", soft_wrap=True)
            return getattr(err, "exit_code", 130)

    return wrapper


def run(main: Callable[[Sequence[str] | None], int]) -> None:
    """Console-script entry point: ``sys.exit(main(sys.argv[1:]))``."""
    sys.exit(main(sys.argv[1:]))
