"""Every user error of ``pixmo`` and ``molmo`` is one line naming the option, key or path,
with exit status 2 and no traceback: a table of bad command lines per CLI, run in-process,
and a few of them as real processes so nothing escapes at the process level either."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import yaml
from PIL import Image

from molmo.cli import main as molmo_main
from pipelines.cli import main as pixmo_main
from pixmo.dataset.writer import write_dataset
from tests.conftest import make_sample
from tests.paths import OFFICIAL_TINY

CHECKPOINT = OFFICIAL_TINY  # no tokenizer: fails late
TRAIN = {"run_dir": "r", "model": {"preset": "tiny", "tokenizer": "tok"},
         "data": {"datasets": [{"name": "d", "source": "shards"}]}}

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

MOLMO = [
    (["train", "{missing}"], "{missing}: cannot read the config: No such file or directory"),
    (["train", "{yaml_syntax}"],
     "{yaml_syntax}: invalid YAML at line 2, column 9: mapping values are not allowed here"),
    (["train", "{yaml_unknown}"], "{yaml_unknown}, field config: unknown keys ['optimizer']"),
    (["train", "{yaml_type}"], "{yaml_type}: config.steps must be int, got 'ten'"),
    (["train", "{yaml_range}"], "{yaml_range}: config.data.batch_size must be >= 1, got 0"),
    (["train", "{yaml_missing}"], "{yaml_missing}: config.run_dir is required"),
    (["train", "{yaml_range}", "--steps", "3"], "unrecognized arguments: --steps 3"),
    (["eval", "{yaml_range}"], "{yaml_range}: config.data.batch_size must be >= 1, got 0"),
    (["eval", "{config}", "--checkpoint", "{missing}"], "{missing}: no exported model here"),
    (["eval", "{config}", "--device", "tpu9"], "argument --device: not a torch device: 'tpu9'"),
    (["predict", "--checkpoint", "{checkpoint}", "--image", "{image}", "--prompt", "Hi?",
      "--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["predict", "--checkpoint", "{checkpoint}", "--image", "{missing}", "--prompt", "Hi?"],
     "{missing}: cannot read the image: No such file or directory"),
    (["predict", "--checkpoint", "{checkpoint}", "--image", "{text}", "--prompt", "Hi?"],
     "{text}: cannot read the image: cannot identify image file"),
    (["predict", "--checkpoint", "{missing}", "--image", "{image}", "--prompt", "Hi?"],
     "{missing}: no config.json in checkpoint directory"),
    (["predict", "--checkpoint", "{checkpoint}", "--image", "{image}", "--prompt", "Hi?",
      "--device", "cuda:7"], "argument --device: 'cuda:7', but torch sees "),
    (["predict", "--checkpoint", "{checkpoint}", "--image", "{image}"],
     "the following arguments are required: --prompt"),
    (["convert", "{checkpoint}", "{out}", "--to", "hf"], "argument --to: invalid choice: 'hf'"),
    (["convert", "{missing}", "{out}", "--to", "ours"],
     "{missing}: no config.json in checkpoint directory"),
    (["convert", "{checkpoint}", "{dataset}", "--to", "ours"],
     "{dataset}: output directory exists and is not empty"),
]

# the same failures through the installed entry points, as a user's shell sees them
PROCESSES = [(program, row) for program, table, says in (
    ("pixmo", PIXMO, {"--shard-samples must be >= 1, got 0", "{dataset}: Is a directory",
                      "argument --engine: invalid choice: 'spark'"}),
    ("molmo", MOLMO, {"{yaml_type}: config.steps must be int, got 'ten'",
                      "argument --device: not a torch device: 'tpu9'"}),
) for row in table if row[1] in says]


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "captions.jsonl").write_text("")
    samples = [make_sample(i) for i in range(3)]
    write_dataset(tmp_path / "dataset", samples, name="dataset")
    Image.new("RGB", (32, 24), (10, 20, 30)).save(tmp_path / "image.png")
    (tmp_path / "notes.txt").write_text("not an image, not parquet, not a folder\n")
    configs = {"syntax": "run_dir: r\nsteps: 1: 2\n",
               "unknown": yaml.safe_dump({**TRAIN, "optimizer": {}}),
               "type": yaml.safe_dump({**TRAIN, "steps": "ten"}),
               "range": yaml.safe_dump({**TRAIN, "data": {**TRAIN["data"], "batch_size": 0}}),
               "missing": yaml.safe_dump({k: v for k, v in TRAIN.items() if k != "run_dir"})}
    out = {f"yaml_{name}": tmp_path / f"{name}.yaml" for name in configs}
    for name, text in configs.items():
        out[f"yaml_{name}"].write_text(text)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(TRAIN))
    out.update(raw=raw, out=tmp_path / "out", missing=tmp_path / "missing", text=tmp_path /
               "notes.txt", dataset=tmp_path / "dataset", image=tmp_path / "image.png",
               checkpoint=CHECKPOINT, config=tmp_path / "train.yaml")
    return {"key": samples[0].key, **{k: str(v) for k, v in out.items()}}


def _fill(texts: Sequence[str], paths: dict[str, str]) -> list[str]:
    return [t.format(**paths) for t in texts]


def _assert_one_line(err: str, program: str, command: str, says: str) -> None:
    """One line from ``program command`` (or from ``program`` alone: argparse's unrecognized
    arguments) that says ``says``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith((f"{program} {command}: ", f"{program}: ")), lines[0]
    assert says in lines[0], lines[0]
    assert "Traceback" not in err


def _in_process(main: Callable[[Sequence[str]], int], argv: list[str],
                capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    try:
        code: int | str | None = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, says", PIXMO, ids=lambda v: " ".join(v) if isinstance(v, list)
                         else None)
def test_pixmo_user_errors_are_one_line(paths, capsys, argv, says):
    code, err = _in_process(pixmo_main, _fill(argv, paths), capsys)
    assert code == 2
    _assert_one_line(err, "pixmo", argv[0], says.format(**paths))


@pytest.mark.parametrize("argv, says", MOLMO, ids=lambda v: " ".join(v) if isinstance(v, list)
                         else None)
def test_molmo_user_errors_are_one_line(paths, capsys, argv, says):
    code, err = _in_process(molmo_main, _fill(argv, paths), capsys)
    assert code == 2
    _assert_one_line(err, "molmo", argv[0], says.format(**paths))


def test_every_command_has_a_bad_command_line():
    assert {argv[0] for argv, _ in PIXMO} == {"build", "import", "transcribe", "inspect",
                                              "validate", "show", "report", "synth"}
    assert {argv[0] for argv, _ in MOLMO} == {"train", "eval", "predict", "convert"}


@pytest.mark.parametrize("program, row", PROCESSES, ids=lambda v: v if isinstance(v, str)
                         else " ".join(v[0]))
def test_no_traceback_reaches_the_shell(paths, program, row):
    argv, says = row
    entry = Path(sys.executable).with_name(program)
    done = subprocess.run([str(entry), *_fill(argv, paths)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    _assert_one_line(done.stderr, program, argv[0], says.format(**paths))
