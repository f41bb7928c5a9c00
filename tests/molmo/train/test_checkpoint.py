"""molmo/train/checkpoint.py: complete-or-absent checkpoints of model, optimizer, loader
position, RNG states and step, restored exactly (single process; two ranks are covered by
tests/molmo/train/test_loop.py)."""

from __future__ import annotations

import random

import numpy as np
import torch

from molmo.data.config import DatasetConfig
from molmo.data.loader import MolmoLoader
from molmo.model.config import preset
from molmo.model.molmo import Molmo
from molmo.train.checkpoint import Checkpointer, rng_state, set_rng_state
from molmo.train.config import CheckpointConfig, OptimConfig
from molmo.train.optim import build_optimizer
from molmo.train.parallel import World
from tests.molmo.data.test_loader import PRE, config, tokenizer  # noqa: F401  (tokenizer is a fixture)
from tests.molmo.data.test_order import make_dataset

WORLD = World(0, 0, 1, torch.device("cpu"), False)


def test_rng_states_round_trip():
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    state = rng_state()
    first = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(again[0], first[0]) and again[1:] == first[1:]


def _trained(seed: int) -> tuple[Molmo, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Molmo(preset("tiny"))
    opt = build_optimizer(model, OptimConfig())
    for group in opt.param_groups:
        group["lr"] = 1e-3
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return model, opt


def test_save_restore_is_exact_and_atomic(tmp_path, tokenizer):  # noqa: F811
    data = make_dataset(tmp_path / "ds", 9, 5)
    cfg = config(DatasetConfig("ds", str(data)), num_workers=0)
    loader = MolmoLoader(cfg, tokenizer, PRE)
    batches = loader.iter_with_info()
    next(batches)
    model, opt = _trained(0)
    ckpt = Checkpointer(tmp_path / "run", CheckpointConfig(keep=2), WORLD)
    for step in (3, 6, 9):
        ckpt.save(step, model, opt, loader, {"note": step})
    assert [p.name for p in ckpt.committed()] == ["step_00000006", "step_00000009"]
    # A directory without its meta.json (a save cut short) is never taken for a checkpoint.
    (tmp_path / "run" / "checkpoints" / "step_00000012").mkdir()
    expected_batch, _ = next(batches)

    other, other_opt = _trained(1)
    fresh = MolmoLoader(cfg, tokenizer, PRE)
    restored = Checkpointer(tmp_path / "run", CheckpointConfig(), WORLD).restore(
        other, other_opt, fresh)
    assert restored is not None and restored.step == 9
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], other_opt.state[q][key])
    batch, _ = next(fresh.iter_with_info())  # the loader continues where it was saved
    assert torch.equal(batch["input_ids"], expected_batch["input_ids"])


def test_restore_without_checkpoints_is_none(tmp_path, tokenizer):  # noqa: F811
    model, opt = _trained(0)
    data = make_dataset(tmp_path / "ds", 3, 3)
    loader = MolmoLoader(config(DatasetConfig("ds", str(data)), num_workers=0), tokenizer, PRE)
    assert Checkpointer(tmp_path, CheckpointConfig(), WORLD).restore(model, opt, loader) is None
