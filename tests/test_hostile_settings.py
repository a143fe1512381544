"""Hostile settings (issue 28): every TrainConfig field fed a wrong type, a non-finite and an out-of-range value,
from a flag, a YAML file and a JSON file. Each is one line on stderr, exit 2, no traceback, nothing written.

The run points at a data folder that does not exist, so a value that slipped through would fail later with
another message (and the test with it), never train.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from distill.cli import _parser, main
from distill.config import BOUNDS, TrainConfig, coerce_setting

FIELDS = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
CHOICES = {"optimizer": "nope", "schedule": "nope", "kd_loss": "nope", "device": "tpu", "teacher_mode": "nope",
           "kind": "both"}


def _kind(name: str) -> str:
    base = FIELDS[name].split("|")[0].strip()
    return "tuple" if base.startswith("tuple") else base


def _wrong_type(name: str) -> object:
    return {"bool": "false", "int": "abc", "float": "abc", "str": 123, "tuple": "0.5"}[_kind(name)]


def _cases() -> list[tuple[str, str, object]]:
    cases = [(name, "wrong type", _wrong_type(name)) for name in FIELDS]
    cases += [(name, "non-finite", [math.nan] if _kind(name) == "tuple" else (math.inf if _kind(name) == "int" else math.nan))
              for name in FIELDS if _kind(name) in ("int", "float", "tuple")]
    for name, (low, high) in BOUNDS.items():
        if high is not None:
            cases.append((name, "out of range", high * 10 + 1 if _kind(name) == "int" else high * 10 + 1.0))
        elif low is not None:
            cases.append((name, "out of range", low - 1))
    cases += [(name, "out of range", value) for name, value in CHOICES.items()]
    cases.append(("milestones", "out of range", [0.5, 10**9]))
    return cases


CASES = _cases()


def _flag_for(name: str) -> str | None:
    """The `distill run` flag that takes a value for field ``name`` (None: no such flag)."""
    run = _parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    for action in run._actions:
        if action.dest == name and action.option_strings and action.nargs != 0:
            return action.option_strings[0]
    return None


def _one_line_refusal(capsys, args: list, out: Path) -> str:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's own refusals (a flag's type or choices)
        code = exit_.code
    _, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    return err


def _base(tmp_path: Path) -> list:
    return ["run", "--data", tmp_path / "no-data", "--device", "cpu", "--out", tmp_path / "run"]


@pytest.mark.parametrize("name, what, value", CASES, ids=[f"{n}-{w}" for n, w, _ in CASES])
def test_a_bad_value_in_a_yaml_file_is_one_line(capsys, tmp_path: Path, name: str, what: str, value: object) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({name: value}))
    err = _one_line_refusal(capsys, [*_base(tmp_path), "--config", path], tmp_path / "run")
    assert f"--{name.replace('_', '-')}" in err or (name == "kind" and "kind" in err)
    assert str(path) in err or name == "kind"


@pytest.mark.parametrize("name, what, value", CASES, ids=[f"{n}-{w}" for n, w, _ in CASES])
def test_a_bad_value_in_a_json_file_is_one_line(capsys, tmp_path: Path, name: str, what: str, value: object) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({name: value}))  # NaN and Infinity as Python's json writes them
    err = _one_line_refusal(capsys, [*_base(tmp_path), "--config", path], tmp_path / "run")
    assert f"--{name.replace('_', '-')}" in err or (name == "kind" and "kind" in err)


# A flag's value is always text: a "wrong type" for a name or a list does not exist there.
FLAG_CASES = [(n, w, v) for n, w, v in CASES if _flag_for(n) and not isinstance(v, list)
              and not (w == "wrong type" and _kind(n) in ("str", "tuple"))]


@pytest.mark.parametrize("name, what, value", FLAG_CASES, ids=[f"{n}-{w}" for n, w, _ in FLAG_CASES])
def test_a_bad_value_from_a_flag_is_one_line(capsys, tmp_path: Path, name: str, what: str, value: object) -> None:
    flag = _flag_for(name)
    err = _one_line_refusal(capsys, [*_base(tmp_path), flag, value], tmp_path / "run")
    assert flag in err


def test_every_field_is_covered_by_a_wrong_type_and_numbers_by_a_bound() -> None:
    assert {n for n, w, _ in CASES if w == "wrong type"} == set(FIELDS)
    numeric = {n for n in FIELDS if _kind(n) in ("int", "float")}
    bounded = set(BOUNDS) | {"ema_decay"}
    assert numeric <= bounded, numeric - bounded


@pytest.mark.parametrize("name, value, expected", [
    ("lr", "1e-3", 0.001), ("lr", "0.1", 0.1), ("epochs", 30.0, 30), ("epochs", "1e3", 1000), ("batch_size", " 64 ", 64),
    ("milestones", ["0.5", 0.75], (0.5, 0.75)), ("ema", False, False), ("teacher", None, None),
])
def test_unambiguous_values_are_converted(name: str, value: object, expected: object) -> None:
    assert coerce_setting(name, value) == expected
    assert getattr(TrainConfig(**{name: value}), name) == expected


def test_a_yaml_lr_written_1e_3_trains_as_a_number(capsys, tmp_path: Path) -> None:
    """PyYAML reads ``1e-3`` as a string; it is a number here, and config.json records it as one."""
    path = tmp_path / "s.yaml"
    path.write_text("lr: 1e-3\nema: false\nepochs: 2\n")
    cfg = TrainConfig.load(path)
    assert cfg.lr == 0.001 and cfg.ema is False and cfg.epochs == 2
    cfg.save(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 0.001


@pytest.mark.parametrize("text, fragment", [
    ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(f"{c}: &{c} [{', '.join(['*' + chr(ord(c) - 1)] * 9)}]\n"
                                                    for c in "bcdefghij"), "YAML aliases"),
    ("[" * 200_000 + "]" * 200_000, "nested"),
    ("1: 2\n", "not text"),
    ("!!python/object/apply:os.system ['echo owned']\n", "cannot read config"),
    ("- lr\n- 0.1\n", "must hold a mapping"),
])
def test_hostile_yaml_files_are_refused_in_one_line(capsys, tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    err = _one_line_refusal(capsys, [*_base(tmp_path), "--config", path], tmp_path / "run")
    assert fragment in err


@pytest.mark.parametrize("data, fragment", [
    (b'{"lr": 0.1, "seed": \xff}', "not UTF-8"),
    (b"[" * 200_000 + b"]" * 200_000, "nested"),
    (b'{"lr": ' + b"1" * (2 << 20) + b"}", "bytes; a settings file is at most"),
    (json.dumps({"students": ["a"], "config": {}}).encode(), "sweep's sweep.json"),
])
def test_hostile_json_files_are_refused_in_one_line(capsys, tmp_path: Path, data: bytes, fragment: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    err = _one_line_refusal(capsys, [*_base(tmp_path), "--config", path], tmp_path / "run")
    assert fragment in err


def test_a_teacher_runs_config_is_not_a_students(capsys, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    TrainConfig(kind="teacher", teacher="r2_11_c8-16").save(path)
    err = _one_line_refusal(capsys, [*_base(tmp_path), "--config", path], tmp_path / "run")
    assert "`distill teacher` run" in err


def test_a_pruned_runs_config_refuses_another_student(capsys, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    TrainConfig(student="r2_11_c8-16", init_ckpt=str(tmp_path / "pruned.pt")).save(path)
    err = _one_line_refusal(capsys, [*_base(tmp_path), "--config", path, "--student", "r1_1_c4"], tmp_path / "run")
    assert "--student r1_1_c4 would not be trained" in err
