"""Checks that a command line's user errors are one line naming the option, key or path, with
exit status 2 and no traceback: run in-process, or through the installed program as a user's
shell runs it. Shared by the tests of ``pipelines/cli.py`` and ``molmo/cli.py``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from pixmo.dataset.writer import write_dataset
from tests.conftest import make_sample

Row = tuple[list[str], str]  # argv, and what the one line says after "program command: "


def make_paths(tmp_path: Path) -> dict[str, str]:
    """What both tables name: a dataset, a text file, a path that is missing, one to write."""
    samples = [make_sample(i) for i in range(3)]
    write_dataset(tmp_path / "dataset", samples, name="dataset")
    (tmp_path / "notes.txt").write_text("not an image, not parquet, not a folder\n")
    return {"key": samples[0].key, "dataset": str(tmp_path / "dataset"),
            "text": str(tmp_path / "notes.txt"), "missing": str(tmp_path / "missing"),
            "out": str(tmp_path / "out")}


def fill(texts: Sequence[str], paths: dict[str, str]) -> list[str]:
    return [t.format(**paths) for t in texts]


def assert_one_line(err: str, program: str, command: str, says: str) -> None:
    """One line from ``program command`` (or from ``program`` alone: argparse's unrecognized
    arguments) that says ``says``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith((f"{program} {command}: ", f"{program}: ")), lines[0]
    assert says in lines[0], lines[0]
    assert "Traceback" not in err


def assert_error_in_process(main: Callable[[Sequence[str]], int], program: str, row: Row,
                            paths: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    argv, says = row
    try:
        code: int | str | None = main(fill(argv, paths))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code == 2
    assert_one_line(capsys.readouterr().err, program, argv[0], says.format(**paths))


def assert_error_in_shell(program: str, row: Row, paths: dict[str, str]) -> None:
    argv, says = row
    entry = Path(sys.executable).with_name(program)
    done = subprocess.run([str(entry), *fill(argv, paths)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert_one_line(done.stderr, program, argv[0], says.format(**paths))


def row_id(value: object) -> str | None:
    return " ".join(value) if isinstance(value, list) else None
