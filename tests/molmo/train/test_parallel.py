"""molmo/train/parallel.py: environment, devices, activation checkpointing, and a real two-process
gloo run proving that DDP and FSDP2 gradients, with the loss divided by the global token
weight and summed (not averaged) across ranks, equal one process on the whole batch."""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from molmo.model.config import preset
from molmo.model.molmo import Molmo, token_loss
from molmo.train import parallel
from molmo.train.config import OptimConfig, ParallelConfig
from molmo.train.optim import freeze


def test_plain_process_is_one_rank_on_cpu(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    world = parallel.init(ParallelConfig(device="cpu"))
    assert world == parallel.World(0, 0, 1, torch.device("cpu"), False)
    assert world.is_main


def test_compute_dtype():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert parallel.compute_dtype(ParallelConfig(), cpu) == torch.float32
    assert parallel.compute_dtype(ParallelConfig(), gpu) == torch.bfloat16
    assert parallel.compute_dtype(ParallelConfig(precision="fp32"), gpu) == torch.float32
    assert parallel.compute_dtype(ParallelConfig(precision="bf16"), cpu) == torch.bfloat16


def batch(seed: int, rows: int = 2, length: int = 160) -> dict[str, torch.Tensor]:
    """Random token ids with one image crop per row, and a different label mask per seed."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 512, (rows, length), generator=g)
    labels = torch.randint(0, 512, (rows, length), generator=g)
    keep = torch.rand(rows, length, generator=g) < 0.2 + 0.3 * (seed % 2)
    labels = torch.where(keep, labels, torch.full_like(labels, -100))
    return {
        "input_ids": ids, "labels": labels, "loss_masks": keep.float(),
        "images": torch.rand(rows, 1, 576, 588, generator=g),
        "image_masks": torch.ones(rows, 1, 576),
        "image_input_idx": torch.arange(1, 145).view(1, 1, 144).expand(rows, 1, 144).clone(),
    }


def loss_sum(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(b["input_ids"], b["images"], b["image_masks"], b["image_input_idx"])
    return token_loss(logits, b["labels"], b["loss_masks"])[0]


def reference_model() -> Molmo:
    torch.manual_seed(0)
    model = Molmo(preset("tiny"))
    freeze(model, OptimConfig())
    return model


def assert_checkpointing_keeps_names_and_gradients(plain: torch.nn.Module) -> dict[str, Any]:
    """A copy with its blocks checkpointed has the same state dict names and, after one
    backward pass on the same batch, the same gradients; returns ``plain``'s gradients."""
    wrapped = copy.deepcopy(plain)
    parallel.checkpoint_blocks(wrapped)
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    b = batch(3)
    loss_sum(plain, b).backward()
    loss_sum(wrapped, b).backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    for name, q in wrapped.named_parameters():
        if name in grads:
            torch.testing.assert_close(q.grad, grads[name], rtol=1e-5, atol=1e-7, msg=name)
    return grads


def test_activation_checkpointing_keeps_names_and_gradients():
    assert_checkpointing_keeps_names_and_gradients(reference_model())


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    batches = [batch(10), batch(11)]  # rank r trains on batches[r]
    divisor = sum(float(b["loss_masks"].sum()) for b in batches)
    ref = reference_model()
    (sum(loss_sum(ref, b) for b in batches) / divisor).backward()
    expected = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    report = {}
    for strategy in ("ddp", "fsdp"):
        cfg = ParallelConfig(strategy=strategy, device="cpu")
        world = parallel.init(cfg)
        model = parallel.wrap(reference_model(), cfg, world)
        local = torch.tensor([float(batches[rank]["loss_masks"].sum())], dtype=torch.float64)
        assert parallel.all_reduce_sum(local).item() == divisor
        (loss_sum(model, batches[rank]) / divisor).backward()
        worst = 0.0
        for name, p in parallel.unwrap(model).named_parameters():
            if p.grad is None:
                assert name not in expected, name
                continue
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
            worst = max(worst, float((grad - expected[name]).abs().max()))
        report[strategy] = {"params_checked": len(expected), "max_abs_diff": worst}
    parallel.close()
    if rank == 0:
        Path(out).write_text(json.dumps(report))


def test_two_rank_ddp_and_fsdp_gradients_equal_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "report.json"
    mp.spawn(_worker, args=(port, str(out)), nprocs=2, join=True)
    report = json.loads(out.read_text())
    for strategy in ("ddp", "fsdp"):
        assert report[strategy]["params_checked"] > 100
        assert report[strategy]["max_abs_diff"] < 1e-5
