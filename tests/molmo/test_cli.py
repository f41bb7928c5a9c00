"""The ``molmo`` command line (``molmo/cli.py``): its ``--device`` type, and a bad command
line for every command, each one line with exit status 2, in-process and from the shell."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from molmo.cli import _device, build_parser, main
from tests.one_line import assert_error_in_process, assert_error_in_shell, make_paths, row_id
from tests.paths import OFFICIAL_TINY, REPO

CHECKPOINT = OFFICIAL_TINY  # no tokenizer: fails late
TRAIN = {"run_dir": "r", "model": {"preset": "tiny", "tokenizer": "tok"},
         "data": {"datasets": [{"name": "d", "source": "shards"}]}}

# (argv, what the one line says after "molmo <command>: "); {name} is a path from ``paths``
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
    (["eval", "--benchmark", "countbench", "{dataset}"],
     "field --checkpoint: required with --benchmark"),
    (["eval", "--benchmark", "countbench", "{dataset}", "--checkpoint", "{checkpoint}", "--out",
      "{out}"], "{dataset}: no countbench questions here; make the dataset with `pixmo import "
                "countbenchqa`"),
    (["eval", "--benchmark", "pixmo-count", "{dataset}", "--checkpoint", "{checkpoint}",
      "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["eval", "--benchmark", "vqa", "{dataset}"], "argument --benchmark: invalid choice: 'vqa'"),
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
     "field --prompt: required with --image"),
    (["predict", "--checkpoint", "{checkpoint}", "--prompt", "Hi?"],
     "field --image: give one of --image or --inputs"),
    (["predict", "--checkpoint", "{checkpoint}", "--image", "{image}", "--inputs", "{out}"],
     "field --image: give one of --image or --inputs"),
    (["predict", "--checkpoint", "{checkpoint}", "--inputs", "{out}"],
     "field --out: required with --inputs (a .jsonl file)"),
    (["predict", "--checkpoint", "{checkpoint}", "--inputs", "{missing}", "--out", "{out}"],
     "{missing}: cannot read the inputs: No such file or directory"),
    (["predict", "--checkpoint", "{checkpoint}", "--inputs", "{dataset}", "--out", "{out}"],
     "field --prompt: a folder of images needs --prompt"),
    (["predict", "--checkpoint", "{checkpoint}", "--inputs", "{missing}", "--out", "{out}",
      "--batch-size", "0"], "field --batch-size: must be at least 1, got 0"),
    (["predict", "--checkpoint", "{checkpoint}", "--image", "{image}", "--prompt", "Hi?",
      "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    (["convert", "{checkpoint}", "{out}", "--to", "hf"], "argument --to: invalid choice: 'hf'"),
    (["convert", "{missing}", "{out}", "--to", "ours"],
     "{missing}: no config.json in checkpoint directory"),
    (["convert", "{checkpoint}", "{dataset}", "--to", "ours"],
     "{dataset}: output directory exists and is not empty"),
    (["export", "{missing}", "{out}"],
     "{missing}: is not a training checkpoint (no readable meta.json)"),
    (["plan", "{yaml_range}"], "{yaml_range}: config.data.batch_size must be >= 1, got 0"),
    (["plan", "{config}", "--gpu-memory", "80XB"],
     "field --gpu-memory: not a memory size: '80XB' (e.g. 80GiB)"),
    (["plan", "{config}", "--devices", "0"], "field --devices: must be at least 1, got 0"),
]

IN_THE_SHELL = {"{yaml_type}: config.steps must be int, got 'ten'",
                "argument --device: not a torch device: 'tpu9'"}


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    Image.new("RGB", (32, 24), (10, 20, 30)).save(tmp_path / "image.png")
    configs = {"syntax": "run_dir: r\nsteps: 1: 2\n",
               "unknown": yaml.safe_dump({**TRAIN, "optimizer": {}}),
               "type": yaml.safe_dump({**TRAIN, "steps": "ten"}),
               "range": yaml.safe_dump({**TRAIN, "data": {**TRAIN["data"], "batch_size": 0}}),
               "missing": yaml.safe_dump({k: v for k, v in TRAIN.items() if k != "run_dir"})}
    out = {}
    for name, text in configs.items():
        (tmp_path / f"{name}.yaml").write_text(text)
        out[f"yaml_{name}"] = str(tmp_path / f"{name}.yaml")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(TRAIN))
    return {**make_paths(tmp_path), **out, "image": str(tmp_path / "image.png"),
            "checkpoint": str(CHECKPOINT), "config": str(tmp_path / "train.yaml")}


@pytest.mark.parametrize("row", MOLMO, ids=lambda row: row_id(row[0]))
def test_user_errors_are_one_line(paths, capsys, row):
    assert_error_in_process(main, "molmo", row, paths, capsys)


@pytest.mark.parametrize("row", [row for row in MOLMO if row[1] in IN_THE_SHELL],
                         ids=lambda row: row_id(row[0]))
def test_no_traceback_reaches_the_shell(paths, row):
    assert_error_in_shell("molmo", row, paths)


def test_every_command_has_a_bad_command_line():
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(commands) == ["convert", "predict", "train", "export", "plan", "eval"]
    assert {argv[0] for argv, _ in MOLMO} == set(commands)


def test_device_takes_what_torch_has():
    assert _device("cpu") == "cpu"
    with pytest.raises(argparse.ArgumentTypeError, match="not a torch device: 'tpu9'"):
        _device("tpu9")
    with pytest.raises(argparse.ArgumentTypeError, match="but torch sees"):
        _device("cuda:99")


def test_print_config_prints_every_default(paths, capsys):
    assert main(["train", paths["config"], "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["run_dir"] == "r" and printed["data"]["batch_size"] >= 1


def test_python_dash_m_molmo_is_the_same_command_line(paths):
    """``python -m molmo`` (what ``torchrun -m molmo`` starts) runs ``molmo.cli.main``."""
    done = subprocess.run([sys.executable, "-m", "molmo", "eval", paths["config"], "--device",
                           "tpu9"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr == "molmo eval: argument --device: not a torch device: 'tpu9'\n"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_predict_refuses_cuda_without_one(paths, capsys):
    """``--device cuda`` on a machine without CUDA: one line naming --device, before loading."""
    with pytest.raises(SystemExit) as exited:  # argparse's exit
        main(["predict", "--checkpoint", paths["checkpoint"], "--image", paths["image"],
              "--prompt", "Hi?", "--device", "cuda"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == ("molmo predict: argument --device: 'cuda', but torch "
                                       "sees 0 CUDA device(s)\n")
