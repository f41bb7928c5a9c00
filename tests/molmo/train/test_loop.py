"""molmo/train/loop.py end to end on CPU: real shards, a real BPE tokenizer, the tiny Molmo, real
``torchrun`` processes on gloo. Two ranks under DDP and FSDP2 must give the loss curve of one
process with the same global batch; a run killed with SIGKILL and resumed must reproduce the
uninterrupted curve bit for bit; the loss on a small fixed set must fall by half."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml

from molmo.data.tasks import CAPTION_TEMPLATES
from molmo.model.molmo import Molmo
from molmo.model.weights import from_pretrained
from molmo.preprocess.tokenizer import train_bpe_tokenizer
from molmo.train.config import TrainConfig
from molmo.train.loop import main_train, train
from pixmo.dataset.writer import write_dataset
from pixmo.errors import PixmoError
from pixmo.points.prompts import POINT_COUNT_TEMPLATES, POINTING_TEMPLATES
from tests.conftest import make_sample
from tests.molmo.data.test_loader import noisy_sample
from tests.molmo.data.test_order import make_dataset
from tests.paths import REPO

ROOT = REPO
STEPS = 10


def make_tokenizer(path: Path) -> Path:
    """A real BPE tokenizer (400 tokens, image tokens at 400..404) from the sample texts."""
    texts = [*CAPTION_TEMPLATES, *POINTING_TEMPLATES, *POINT_COUNT_TEMPLATES,
             *(make_sample(i).json["captions"][0]["text"] for i in range(50)),
             '<point x="50.0" y="50.0" alt="square">square</point> Counting the shows a total']
    train_bpe_tokenizer(texts * 3, path, vocab_size=400)
    return path


def tiny_config(run_dir: Path, shards: Path, tokenizer: Path, **sections: Any) -> dict[str, Any]:
    """The tiny preset with 112 px crops and a 3-block ViT: seconds per run on CPU."""
    cfg: dict[str, Any] = {
        "run_dir": str(run_dir), "steps": STEPS, "global_batch_size": 4, "seed": 1,
        "model": {"preset": "tiny", "tokenizer": str(tokenizer), "overrides": {
            "vision": {"image_size": 112, "layers": 3, "feature_layers": [-1, -3]},
            "llm": {"vocab_size": 400, "embedding_size": 400}}},
        "data": {"datasets": [{"name": "ds", "source": str(shards)}], "batch_size": 2,
                 "num_workers": 1, "shuffle_block": 4, "max_sequence_length": 256, "seed": 3},
        "preprocess": {"crop_size": 112, "overlap_margins": [2, 2], "max_crops": 2,
                       "official_mask_quirk": False,
                       "conversation_weighting": "root_subsegments"},
        "optim": {g: {"lr": 1e-3, "warmup_steps": 2} for g in ("connector", "vit", "llm")},
        "parallel": {"strategy": "ddp"},
        "checkpoint": {"interval": 2, "keep": 2, "export": False},
        "metrics": {"log_interval": 1, "progress_bar": False, "tensorboard": False},
    }
    for name, value in sections.items():
        cfg[name] = {**cfg.get(name, {}), **value} if isinstance(value, dict) else value
    return cfg


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def command(config: Path, ranks: int, *extra: str) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "molmo", "train", str(config), *extra]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
            "--standalone", "-m", "molmo", "train", str(config), *extra]


# torchrun runs this in place of ``-m molmo train``: every rank stops once the step-2
# checkpoint is committed, says so on stdout with its pid (in one write, so the ranks' lines
# cannot interleave) and waits there to be killed
HELD_TRAIN = """\
import os
import sys
import threading

sys.path[:0] = [{root!r}]
from molmo.train import checkpoint as train_checkpoint
from molmo.cli import main

save = train_checkpoint.Checkpointer.save


def save_then_hold(self, step, *args, **kwargs):
    path = save(self, step, *args, **kwargs)
    if step == 2:
        os.write(1, f"held {{os.getpid()}}\\n".encode())
        threading.Event().wait()
    return path


train_checkpoint.Checkpointer.save = save_then_hold
sys.exit(main(["train", *sys.argv[1:]]))
"""


def launch(config: Path, ranks: int, *extra: str) -> None:
    done = subprocess.run(command(config, ranks, *extra), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def losses(run_dir: Path) -> dict[int, dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return root, make_dataset(root / "ds", 24, 8), make_tokenizer(root / "tok")


@pytest.fixture(scope="module")
def single(setup):
    """The reference: one process, two loader workers, two micro-batches per step (the same
    slots, hence the same global batches, as two ranks with one worker each)."""
    root, data, tok = setup
    cfg = tiny_config(root / "single", data, tok, data={"num_workers": 2})
    launch(write_yaml(root / "single.yaml", cfg), 1)
    return losses(root / "single")


def two_ranks(setup, strategy: str) -> Path:
    """DDP's ranks load with a worker thread each, FSDP's with a worker process: the same
    batches, hence the same losses."""
    root, data, tok = setup
    run_dir = root / strategy
    cfg = tiny_config(run_dir, data, tok, parallel={"strategy": strategy},
                      data={"worker_type": "thread" if strategy == "ddp" else "process"})
    if strategy == "fsdp":  # also: evaluation of the sharded model, and its export
        cfg["eval"] = {"interval": 5, "pointing": str(data), "captions": str(data),
                       "max_examples": 3, "max_new_tokens": 4}
        cfg["checkpoint"]["export"] = True
    launch(write_yaml(root / f"{strategy}.yaml", cfg), 2)
    return run_dir


@pytest.fixture(scope="module")
def fsdp_run(setup):
    return two_ranks(setup, "fsdp")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(setup, single, fsdp_run, strategy):
    run_dir = fsdp_run if strategy == "fsdp" else two_ranks(setup, strategy)
    got = losses(run_dir)
    assert sorted(got) == sorted(single) == list(range(1, STEPS + 1))
    assert single[STEPS]["loss"] < single[1]["loss"]  # it trains
    for step in got:
        # Same global batch, different examples and supervised-token counts on each rank.
        assert got[step]["tokens"] == single[step]["tokens"]
        assert got[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-5)
        for group in ("connector", "vit", "llm"):
            key = f"grad_norm/{group}"
            assert got[step][key] == pytest.approx(single[step][key], rel=1e-3, abs=1e-7)
            assert got[step][f"lr/{group}"] == single[step][f"lr/{group}"]
    # Two checkpoints kept, each with both ranks' loader/RNG states.
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == [f"step_{STEPS - 2:08d}", f"step_{STEPS:08d}"]
    assert len(list((run_dir / "checkpoints" / kept[-1]).glob("rank_*.json"))) == 2
    if strategy == "fsdp":
        for step in (5, STEPS):
            results = json.loads((run_dir / "eval" / f"step_{step}" / "eval.json").read_text())
            assert results["num_eval_examples"] == 3 and results["caption_loss"] > 0
        # The export (gathered from both ranks' shards) holds the final checkpoint's weights.
        exported = from_pretrained(run_dir / "model").state_dict()
        state = {"model": Molmo(from_pretrained(run_dir / "model").cfg).state_dict()}
        dcp.load(state, checkpoint_id=str(run_dir / "checkpoints" / kept[-1] / "dcp"))
        assert exported.keys() == state["model"].keys()
        for name, tensor in exported.items():
            assert torch.equal(tensor, state["model"][name]), name


def test_kill_and_resume_reproduces_uninterrupted_curve(setup, fsdp_run):
    """FSDP on two ranks, SIGKILL after the step-2 checkpoint is committed, then --resume;
    the uninterrupted reference is the FSDP run above. Both ranks wait after that checkpoint
    until the kill, so it lands there however fast the machine is."""
    root, data, tok = setup
    full_dir, cut_dir = fsdp_run, root / "cut"
    cfg = tiny_config(cut_dir, data, tok, parallel={"strategy": "fsdp"})
    config = write_yaml(root / "cut.yaml", cfg)
    script = root / "held_train.py"
    script.write_text(HELD_TRAIN.format(root=str(ROOT)))
    log = root / "held_train.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run",
                                 "--nproc_per_node", "2", "--standalone", str(script),
                                 str(config)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=stderr, text=True, start_new_session=True)
    ranks = []
    for line in proc.stdout:
        if line.startswith("held "):
            ranks.append(int(line.split()[1]))
            if len(ranks) == 2:
                break
    # the launcher, then each rank with its loader workers: torchrun starts every rank in a
    # session of its own, which killing the launcher's group leaves running
    for group in (proc.pid, *ranks):
        with contextlib.suppress(ProcessLookupError):  # gone already if never held
            os.killpg(group, signal.SIGKILL)
    proc.communicate()
    tail = log.read_text()[-3000:]
    assert len(ranks) == 2, f"the run ended before both ranks were held:\n{tail}"
    assert proc.returncode == -signal.SIGKILL
    kept = sorted(p.name for p in (cut_dir / "checkpoints").glob("step_*"))
    assert kept == ["step_00000002"]  # killed before the end
    assert (cut_dir / "checkpoints" / kept[0] / "meta.json").is_file()
    launch(config, 2, "--resume")
    full, resumed = losses(full_dir), losses(cut_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in full:  # bit for bit: same floats, not merely close
        for key in ("loss", "z_loss", "grad_norm/llm", "grad_norm/vit", "grad_norm/connector"):
            assert resumed[step][key] == full[step][key], (step, key)


def test_refuses_to_overwrite_a_run_without_resume(setup):
    root, data, tok = setup
    cfg = tiny_config(root / "twice", data, tok, steps=2)
    config = write_yaml(root / "twice.yaml", cfg)
    main_train(str(config))
    with pytest.raises(PixmoError, match="already has checkpoints: pass --resume"):
        main_train(str(config))
    main_train(str(config), resume=True)  # nothing left to do: restores step 2 and stops
    assert sorted(losses(root / "twice")) == [1, 2]


def test_loss_on_a_small_fixed_set_halves_and_model_exports(setup, tmp_path):
    """Four samples seen over and over (finite mode): the loss must drop by half in 30 steps;
    the exported model (with tokenizer) loads with ``from_pretrained`` and has the weights."""
    root, _, tok = setup
    small = make_dataset(tmp_path / "small", 4, 4)
    cfg = tiny_config(tmp_path / "run", small, tok, steps=30, global_batch_size=4,
                      data={"batch_size": 4, "num_workers": 0, "mode": "finite"},
                      optim={g: {"lr": 3e-3, "warmup_steps": 5}
                             for g in ("connector", "vit", "llm")},
                      checkpoint={"interval": 0, "export": True})
    train(TrainConfig.from_dict(cfg))
    curve = losses(tmp_path / "run")
    assert curve[30]["loss"] <= 0.5 * curve[1]["loss"], (curve[1]["loss"], curve[30]["loss"])
    model = from_pretrained(tmp_path / "run" / "model")
    assert (tmp_path / "run" / "model" / "tokenizer.json").is_file()
    assert model.cfg.vision.image_size == 112
    assert model.llm.lm_head.weight.abs().sum() > 0
    assert torch.isfinite(model.llm.lm_head.weight).all()


def test_uint8_crops_train_like_float32_crops(setup, tmp_path):
    """The loader's default uint8 crops, normalised on the device in ``train_step``, follow the
    float32 crops' loss curve up to the pixel rounding; evaluation inside the uint8 run gets
    float32 crops from its own processor and scores like the float32 run. Noise images, so the
    rounding is real."""
    _, _, tok = setup
    data = tmp_path / "noisy"
    write_dataset(data, [noisy_sample(i) for i in range(8)], name="noisy")
    curves, evals = {}, {}
    for dtype in ("uint8", "float32"):
        cfg = tiny_config(tmp_path / dtype, data, tok, steps=3,
                          data={"num_workers": 0, "pixel_dtype": dtype},
                          checkpoint={"interval": 0, "final": False},
                          eval={"interval": 3, "captions": str(data), "max_examples": 2})
        train(TrainConfig.from_dict(cfg))
        curves[dtype] = losses(tmp_path / dtype)
        evals[dtype] = json.loads((tmp_path / dtype / "eval" / "step_3" / "eval.json")
                                  .read_text())
    assert sorted(curves["uint8"]) == sorted(curves["float32"]) == [1, 2, 3]
    for step, row in curves["float32"].items():
        assert curves["uint8"][step]["tokens"] == row["tokens"]
        assert curves["uint8"][step]["loss"] == pytest.approx(row["loss"], rel=1e-4)
    assert evals["uint8"]["caption_loss"] == pytest.approx(evals["float32"]["caption_loss"],
                                                           rel=1e-4)


def test_a_run_from_pretrained_parts_trains_and_exports(setup, tmp_path):
    """``model: {llm, vision}``: a transformers Qwen2 and CLIP vision tower (with the run's
    tokenizer in the LLM directory, where the run looks for it) train like a preset."""
    import transformers

    _, data, tok = setup
    llm, vision = tmp_path / "qwen2", tmp_path / "clip"
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=400, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2)).save_pretrained(llm)
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        image_size=112, patch_size=14)).save_pretrained(vision)
    for item in tok.iterdir():
        shutil.copy(item, llm / item.name)
    cfg = tiny_config(tmp_path / "run", data, tok, steps=3,
                      data={"num_workers": 0}, checkpoint={"interval": 0, "export": True})
    cfg["model"] = {"llm": str(llm), "vision": str(vision),
                    "overrides": {"vision": {"feature_layers": [-1, -3]}}}
    train(TrainConfig.from_dict(cfg))
    curve = losses(tmp_path / "run")
    assert sorted(curve) == [1, 2, 3] and all(torch.isfinite(torch.tensor(r["loss"]))
                                              for r in curve.values())
    model = from_pretrained(tmp_path / "run" / "model")
    assert (model.cfg.vision.layers, model.cfg.llm.d_model, model.cfg.llm.vocab_size) == (
        3, 32, 400)
    assert (tmp_path / "run" / "model" / "tokenizer.json").is_file()
