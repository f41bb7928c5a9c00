"""The ``pixmo`` command line (``pipelines/cli.py``): a build and a transcription run
in-process, what ``inspect`` and ``validate`` print, and a bad command line for every
command, each one line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import build_parser, main
from pixmo.dataset.verify import verify
from tests.one_line import assert_error_in_process, assert_error_in_shell, make_paths, row_id
from tests.paths import SPEECH
from tests.pipelines.conftest import make_raw
from tests.pipelines.test_collect import ERRORS as COLLECT_ERRORS

# (argv, what the one line says after "pixmo <command>: "); {name} is a path from ``paths``
PIXMO = [
    (["build", "--raw", "{raw}", "--out", "{out}", "--shard-samples", "0"],
     "--shard-samples must be >= 1, got 0"),
    (["build", "--raw", "{raw}", "--out", "{out}", "--shard-bytes", "5"],
     "--shard-bytes must be >= 2048, got 5"),
    (["build", "--raw", "{raw}", "--out", "{out}", "--min-speech-s", "-1"],
     "--min-speech-s must be >= 0, got -1.0"),
    (["build", "--raw", "{raw}", "--out", "{out}", "--cpu-threads", "0"],
     "--cpu-threads must be >= 1, got 0"),
    (["build", "--raw", "{raw}", "--out", "{out}", "--workers", "0"],
     "argument --workers: must be >= 1, got 0"),
    (["build", "--raw", "{raw}", "--out", "{out}", "--progress-interval", "0"],
     "argument --progress-interval: must be > 0, got 0"),
    (["build", "--raw", "{raw}", "--out", "{out}", "--gpus-per-worker", "-1"],
     "argument --gpus-per-worker: must be >= 0, got -1"),
    (["build", "--raw", "{raw}", "--out", "{out}", "--gpus-per-worker", "1"],
     "--gpus-per-worker is for --engine ray"),
    (["build", "--raw", "{raw}", "--out", "{out}", "--shard-samples", "many"],
     "argument --shard-samples: invalid int value: 'many'"),
    (["build", "--raw", "{raw}", "--out", "{out}", "--engine", "spark"],
     "argument --engine: invalid choice: 'spark'"),
    (["build", "--raw", "{raw}", "--out", "{out}", "--engine", "ray", "--runner", "X"],
     "unrecognized arguments for --engine ray: --runner X"),
    (["build", "--raw", "{missing}", "--out", "{out}"],
     "{missing}: no captions.jsonl, points.jsonl or .parquet inputs"),
    (["build", "--raw", "{raw}"], "the following arguments are required: --out"),
    (["import", "pixmo-cap", "--parquet", "{missing}", "--out", "{out}", "--workers", "0"],
     "--workers must be >= 1, got 0"),
    (["import", "pixmo-cap", "--parquet", "{missing}", "--out", "{out}",
      "--shard-samples", "0"], "--shard-samples must be >= 1, got 0"),
    (["import", "pixmo-cap", "--parquet", "{missing}", "--out", "{out}"],
     "{missing}: parquet file not found"),
    (["import", "pixmo-cap", "--parquet", "{text}", "--out", "{out}"],
     "{text}: not a parquet file: "),
    (["import", "pixmo-clocks", "--parquet", "{text}", "--out", "{out}"],
     "argument subset: invalid choice: 'pixmo-clocks'"),
    (["transcribe", "{text}", "--min-speech-s", "-5"], "--min-speech-s must be >= 0, got -5.0"),
    (["transcribe", "{text}", "--cpu-threads", "-2"], "--cpu-threads must be >= 1, got -2"),
    (["transcribe", "{text}", "--backend", "whisper.cpp"],
     "argument --backend: invalid choice: 'whisper.cpp'"),
    (["inspect", "{missing}"], "{missing}: not a dataset directory"),
    (["validate", "{text}"], "{text}: not a dataset directory"),
    (["validate", "{dataset}", "--strict"], "unrecognized arguments: --strict"),
    (["show", "{dataset}", "--key", "nokey", "--out", "{out}"],
     "{dataset}, record nokey: no sample with this key"),
    (["show", "{dataset}", "--key", "{key}", "--out", "{dataset}"], "{dataset}: Is a directory"),
    (["report", "{dataset}", "--out", "{out}", "--run", "{missing}"],
     "{missing}: no such training run directory"),
    (["report", "{missing}", "--out", "{out}"], "{missing}: not a dataset"),
    (["synth", "--out", "{out}", "--scenes", "0"], "--scenes must be >= 1, got 0"),
    (["synth", "--out", "{out}", "--seed", "-1"], "--seed must be >= 0, got -1"),
    (["synth", "--out", "{out}", "--first-index", "-3"], "--first-index must be >= 0, got -3"),
    (["synth", "--out", "{text}", "--scenes", "1"], "{text}/images: Not a directory"),
]

IN_THE_SHELL = {"--shard-samples must be >= 1, got 0", "{dataset}: Is a directory",
                "argument --engine: invalid choice: 'spark'"}


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "captions.jsonl").write_text("")
    return {**make_paths(tmp_path), "raw": str(raw)}


@pytest.mark.parametrize("row", PIXMO, ids=lambda row: row_id(row[0]))
def test_user_errors_are_one_line(paths, capsys, row):
    assert_error_in_process(main, "pixmo", row, paths, capsys)


@pytest.mark.parametrize("row", [row for row in PIXMO if row[1] in IN_THE_SHELL],
                         ids=lambda row: row_id(row[0]))
def test_no_traceback_reaches_the_shell(paths, row):
    assert_error_in_shell("pixmo", row, paths)


def test_every_command_has_a_bad_command_line():
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(commands) == ["inspect", "validate", "show", "import", "synth", "report",
                              "transcribe", "build", "collect"]
    tables = [*PIXMO, *COLLECT_ERRORS]  # collect's rows are with its server tests
    assert {argv[0] for argv, _ in tables} == set(commands)


def test_cli_build_and_transcribe(tmp_path, capsys):
    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "out"
    assert main(["build", "--raw", str(raw), "--out", str(out), "--min-speech-s", "5",
                 "--no-transcribe", "--direct_running_mode=in_memory"]) == 0
    printed = capsys.readouterr().out
    assert "built" in printed and "transcription_failed" in printed
    assert "stage" in printed and "seconds" in printed
    assert verify(out) == []
    assert main(["transcribe", str(SPEECH / "desk.flac"), str(raw / "images/broken.png"),
                 "--min-speech-s", "5"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["transcript"]["model"] == "tiny.en"
    assert lines[1]["reject"]["reason"] == "audio_unreadable"


def test_inspect_and_validate_print_what_they_found(paths, capsys):
    assert main(["inspect", paths["dataset"]]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("dataset dataset: 3 samples in 1 shards, ")
    assert "rejected: none" in printed and "first sample (" in printed
    assert main(["validate", paths["dataset"]]) == 0
    assert capsys.readouterr().out == f"{paths['dataset']}: ok\n"
