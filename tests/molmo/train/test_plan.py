"""molmo/train/plan.py against measured peaks: real training steps (the loop's own
``train_step``, AdamW, clipping, LoRA through peft, activation checkpointing) of the tiny,
small and tiny-moe presets on CPU, their peak of live tensor bytes measured, the plan within 15%.

The FSDP rows are measured the same way in two real gloo processes (FSDP2 over 2 devices).

How the peak is measured: a ``TorchDispatchMode`` sees every tensor every op returns (forward,
backward, recomputation, optimizer); each new storage is held by a weak reference until a
finalizer sees it freed, with the parameters counted from the start, and after every op the
live bytes are the sum of those storages' current sizes (FSDP2 frees an unsharded parameter by
resizing its storage to 0 and all-gathers into it again later, so a storage's size changes
without a new tensor; a DTensor counts its local shard). That is the number
``torch.cuda.max_memory_allocated`` reports on a GPU (live tensor bytes, not the allocator's
cache), exactly and without noise: process RSS would add the allocator's and torch's own
buffers (tens of MiB against a tiny model's ~10 MiB), tracemalloc sees no torch allocation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import types
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from molmo.cli import main
from molmo.data.slots import BatchInfo
from molmo.model.molmo import Molmo
from molmo.train import lora, parallel
from molmo.train.config import ParallelConfig, TrainConfig
from molmo.train.loop import build_model, train_step
from molmo.train.metrics import FlopModel
from molmo.train.optim import build_optimizer, freeze
from molmo.train.plan import largest_batch, model_config, parse_size, plan, plans, render

TOLERANCE = 0.15
LORA = {"rank": 4, "alpha": 8}
TINY = {"vision": {"image_size": 112, "layers": 3, "feature_layers": [-1, -3]},
        "llm": {"vocab_size": 400, "embedding_size": 400}}
SMALL = {"vision": {"image_size": 112}}


class PeakBytes(TorchDispatchMode):
    """Live tensor bytes (each storage once, at its current size) and their peak, from
    ``tensors`` on."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        super().__init__()
        self.live: dict[int, weakref.ref] = {}
        self.peak = 0
        for t in tensors:
            self._count(t)
        self._measure()

    @property
    def now(self) -> int:
        return sum(s.nbytes() for ref in list(self.live.values()) if (s := ref()) is not None)

    def _count(self, t: torch.Tensor) -> None:
        storage = (t.to_local() if isinstance(t, DTensor) else t).untyped_storage()
        key = id(storage)
        if key in self.live or not storage.nbytes():
            return
        self.live[key] = weakref.ref(storage)
        weakref.finalize(storage, self.live.pop, key, None)

    def _measure(self) -> None:
        self.peak = max(self.peak, self.now)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._count(t)
        self._measure()
        return out


def config(preset: str, overrides: dict[str, Any], batch: int, seq_len: int, *,
           lora_section: dict[str, Any] | None = None, checkpointing: bool = False,
           crops: int = 3) -> TrainConfig:
    data: dict[str, Any] = {
        "run_dir": "unused", "steps": 2, "global_batch_size": batch,
        "model": {"preset": preset, "tokenizer": "unused", "overrides": overrides},
        "data": {"datasets": [{"name": "ds", "source": "unused"}], "batch_size": batch,
                 "max_sequence_length": seq_len, "pixel_dtype": "float32"},
        "preprocess": {"max_crops": crops - 1},
        "parallel": {"activation_checkpointing": checkpointing, "device": "cpu"}}
    if lora_section is not None:
        data["lora"] = lora_section
    return TrainConfig.from_dict(data)


def micro_batch(model: Molmo, cfg: TrainConfig) -> tuple[dict[str, torch.Tensor], BatchInfo]:
    """A full micro-batch of the planned shapes: every token and crop real."""
    b, n = cfg.data.batch_size, cfg.data.max_sequence_length
    crops, v = cfg.preprocess.max_crops + 1, model.cfg.vision
    pooled = (v.grid // model.cfg.connector.pool_size) ** 2
    idx = torch.arange(1, crops * pooled + 1).view(1, crops, pooled).repeat(b, 1, 1)
    vocab = model.cfg.llm.vocab_size
    batch = {"input_ids": torch.randint(0, vocab, (b, n)),
             "images": torch.randn(b, crops, v.grid ** 2, v.patch_dim),
             "image_masks": torch.ones(b, crops, v.grid ** 2), "image_input_idx": idx,
             "position_ids": torch.arange(n).repeat(b, 1),
             "subsegment_ids": torch.zeros(b, n, dtype=torch.long),
             "labels": torch.randint(0, vocab, (b, n)), "loss_masks": torch.ones(b, n)}
    return batch, BatchInfo(0, ("k",) * b, ("ds",) * b, (False,) * b, {})


def measured_peak(cfg: TrainConfig, world: parallel.World | None = None, steps: int = 2) -> int:
    """Peak live bytes over ``steps`` real training steps, built as ``loop.build`` does
    (in ``world``'s process group: FSDP2 when the config says so)."""
    world = world or parallel.World(0, 0, 1, torch.device("cpu"), False)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if cfg.lora is not None:
        lora.apply(model, cfg.lora)
    freeze(model, cfg.optim)
    wrapped = parallel.wrap(model, cfg.parallel, world)
    optimizer = build_optimizer(model, cfg.optim)
    run = types.SimpleNamespace(cfg=cfg, world=world, model=wrapped, optimizer=optimizer,
                                flops=FlopModel.of(model), loader=None,
                                compute_dtype=torch.float32)
    with PeakBytes([*model.parameters(), *model.buffers()]) as tracker:
        for step in range(1, steps + 1):
            train_step(run, [micro_batch(model, cfg)], step)  # type: ignore[arg-type]
    return tracker.peak


@pytest.mark.parametrize("preset,overrides,seq_len,lora_section,checkpointing", [
    ("tiny", TINY, 256, None, False),
    ("tiny", TINY, 256, None, True),
    ("tiny", TINY, 256, LORA, False),
    ("tiny", TINY, 256, LORA, True),
    ("small", SMALL, 128, None, False),
    ("small", SMALL, 128, LORA, True),
    ("tiny-moe", TINY, 256, None, False),
], ids=["tiny-full", "tiny-full-ckpt", "tiny-lora", "tiny-lora-ckpt", "small-full",
        "small-lora-ckpt", "tiny-moe-full"])
def test_plan_within_15_percent_of_measured_peak(preset, overrides, seq_len, lora_section,
                                                 checkpointing):
    cfg = config(preset, overrides, 2, seq_len, lora_section=lora_section,
                 checkpointing=checkpointing)
    measured = measured_peak(cfg)
    planned = plan(cfg, mode="full" if lora_section is None else "lora", gpu=False).peak
    assert abs(planned - measured) <= TOLERANCE * measured, (planned, measured)


FSDP_CASES = [("tiny", TINY, 256, False), ("small", SMALL, 128, True)]


def _fsdp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    sharded = ParallelConfig(strategy="fsdp", device="cpu")
    world = parallel.init(sharded)
    rows = []
    for preset, overrides, seq_len, checkpointing in FSDP_CASES:
        cfg = config(preset, overrides, 2, seq_len, checkpointing=checkpointing)
        cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(
            cfg.parallel, strategy="fsdp"))
        measured = measured_peak(cfg, world)
        rows.append({"measured": measured, "planned": plan(cfg, mode="fsdp", devices=2,
                                                           gpu=False).peak})
    parallel.close()
    Path(out, f"rank{rank}.json").write_text(json.dumps(rows))


def test_fsdp_plan_within_15_percent_of_measured_peak_on_two_ranks(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for i, (preset, overrides, seq_len, checkpointing) in enumerate(FSDP_CASES):
        one_process = measured_peak(config(preset, overrides, 2, seq_len,
                                           checkpointing=checkpointing))
        for rank, rows in enumerate(ranks):
            row = rows[i]
            assert abs(row["planned"] - row["measured"]) <= TOLERANCE * row["measured"], \
                (preset, rank, row)
            assert row["measured"] < one_process  # the sharding is real


def test_the_tracker_counts_live_bytes():
    x = torch.zeros(1000)
    with PeakBytes([x]) as tracker:
        y = x + 1
        z = y * 2
        assert tracker.now == 3 * 4000
        del y, z
        assert tracker.now == 4000
        w = x * 3  # FSDP2 frees by resizing a storage to 0 and refills it the same way
        w.untyped_storage().resize_(0)
        assert tracker.now == 4000
        w.untyped_storage().resize_(8000)
        _ = x + 0
        assert tracker.now == 4000 + 8000 + 4000  # x, w refilled, x + 0
    assert tracker.peak == 4000 + 8000 + 4000


def test_parts_of_the_plan():
    cfg = config("tiny", TINY, 2, 256, lora_section=LORA)
    model = Molmo(model_config(cfg))
    total = sum(p.numel() for p in model.parameters())
    full, fsdp, adapters = (plan(cfg, mode=m, devices=4, gpu=False) for m in
                            ("full", "fsdp", "lora"))
    blocks = [sum(p.numel() for p in b.parameters())
              for b in [*model.vision.blocks, *model.llm.blocks]]
    lora.apply(model, cfg.lora)  # peft's own count of adapter parameters
    trainable, _ = lora.parameter_counts(model)
    assert adapters.grads == 4 * trainable and adapters.optimizer == 8 * trainable
    assert adapters.params == 4 * (total + trainable)
    freeze(fresh := Molmo(model_config(cfg)), cfg.optim)
    assert full.grads == 4 * sum(p.numel() for p in fresh.parameters() if p.requires_grad)
    assert full.params == 4 * total and full.optimizer == 2 * full.grads
    assert (fsdp.params, fsdp.grads, fsdp.optimizer) == (full.params // 4, full.grads // 4,
                                                         full.optimizer // 4)
    unsharded = 4 * (2 * max(blocks) + total - sum(blocks))  # two blocks and the root's
    # the backward pass's peak (it dominates the optimizer step here)
    assert fsdp.peak == fsdp.params + fsdp.optimizer + full.activations + unsharded
    ckpt = plan(cfg, mode="full", checkpointing=True, gpu=False)
    assert ckpt.activations < full.activations
    gpu = plan(cfg, mode="full")  # bf16 activations (the head stays fp32)
    assert full.activations / 2 < gpu.activations < full.activations


def test_largest_micro_batch_fits():
    cfg = config("tiny", TINY, 2, 256)
    memory = plan(cfg, batch=13, gpu=False).peak
    best = plan(cfg, gpu=False, gpu_memory=memory).max_micro_batch
    assert best == 13
    assert plan(cfg, gpu=False, gpu_memory=1000).max_micro_batch == 0
    assert largest_batch(lambda b: b, 10 ** 9) == 1 << 16  # capped


def test_sizes():
    assert parse_size("80GiB") == 80 * 2 ** 30
    assert parse_size("141 GB") == 141 * 10 ** 9
    assert parse_size("512mib") == 512 * 2 ** 20
    assert parse_size("1000") == 1000


def test_cli_table_json_and_errors(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(config("tiny", TINY, 2, 256).to_yaml())
    assert main(["plan", str(path), "--gpu-memory", "1GiB", "--devices", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("GiB per device; activations per micro-batch of 2 x 256")
    assert [line.split()[:2] for line in table[2:]] == [
        ["full", "off"], ["full", "on"], ["fsdp/2", "off"], ["fsdp/2", "on"], ["lora", "off"],
        ["lora", "on"]]
    assert main(["plan", str(path), "--json", "--cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plans"][0] == plan(config("tiny", TINY, 2, 256), gpu=False).to_dict()
    assert main(["plan", str(path), "--gpu-memory", "80XB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["molmo plan: field --gpu-memory: not a memory size: '80XB' (e.g. 80GiB)"]
    assert main(["plan", str(path), "--devices", "0"]) == 2
    assert "--devices" in capsys.readouterr().err


def test_the_fine_tuning_guide_shows_what_molmo_plan_prints():
    """README's guide quotes ``molmo plan`` on its two configs (same table for both); the
    released model's architecture is the ``molmo-7b-d`` preset, so no weights are needed."""
    root = Path(__file__).resolve().parents[3]
    readme = (root / "README.md").read_text()
    guide = readme[readme.index("### Fine-tune Molmo-7B-D on your data"):]
    quoted = guide[guide.index("     mode  act.ckpt"):].split("```")[0].splitlines()
    for name in ("molmo-7b-d-lora", "molmo-7b-d-fsdp"):
        data = yaml.safe_load((root / "configs" / f"{name}.yaml").read_text())
        assert data["model"] == {"checkpoint": "checkpoints/Molmo-7B-D-0924"}
        data["model"] = {"preset": "molmo-7b-d", "tokenizer": "unused"}
        cfg = TrainConfig.from_dict(data)
        table = render(cfg, plans(cfg, devices=8, gpu_memory=parse_size("80GiB")))
        assert [line.strip() for line in table.splitlines()[1:]] == \
            [line.strip() for line in quoted if line.strip()], name
