"""Helpers shared by the CLI tests: run a command's ``main`` in-process and check one-line errors."""

from __future__ import annotations

from typing import Callable, Sequence


def invoke(main: Callable[[Sequence[str]], int], capsys, *args) -> tuple[int, str, str]:
    """Run ``main(args)`` in-process (importing torch in a subprocess costs seconds); return code, stdout, stderr."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    """Bad input exits 2 with exactly one line on stderr that contains ``fragment``, and no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert fragment in err, err
