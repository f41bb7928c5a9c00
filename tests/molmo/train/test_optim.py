"""molmo/train/optim.py: connector / ViT / LLM groups, freezing, per-group learning rates and
gradient clipping computed separately for each group."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from molmo.model.config import preset
from molmo.model.molmo import Molmo
from molmo.train.config import GroupConfig, OptimConfig
from molmo.train.optim import build_optimizer, clip_per_group, freeze, group_of, set_lrs
from molmo.train.schedule import lr_at


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Molmo(preset("tiny"))


def test_every_parameter_has_a_group(model):
    groups = {group_of(n) for n, _ in model.named_parameters()}
    assert groups == {"vit", "connector", "llm"}
    assert group_of("vision.blocks.0.attn.wq.weight") == "vit"
    with pytest.raises(ValueError, match="belongs to no optimizer group"):
        group_of("head.weight")


def test_freeze_groups_and_never_run_vit_blocks(model):
    cfg = OptimConfig(vit=GroupConfig(1e-5, 10, frozen=True))
    freeze(model, cfg)
    opt = build_optimizer(model, cfg)
    assert [g["name"] for g in opt.param_groups] == ["connector", "llm"]
    assert not any(p.requires_grad for p in model.vision.parameters())
    fresh = Molmo(preset("tiny"))
    freeze(fresh, OptimConfig())
    last = max(fresh.vision.feature_blocks)  # tiny: feature layers (-2, -9) of 10 blocks
    assert last == 8
    assert not any(p.requires_grad for p in fresh.vision.blocks[9].parameters())
    assert all(p.requires_grad for p in fresh.vision.blocks[8].parameters())
    opt = build_optimizer(fresh, OptimConfig())
    counts = {g["name"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    assert sum(counts.values()) == sum(p.numel() for p in fresh.parameters() if p.requires_grad)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-6


def test_learning_rates_follow_each_groups_schedule(model):
    cfg = OptimConfig()
    opt = build_optimizer(model, cfg)
    lrs = set_lrs(opt, cfg, 100, 1000)
    assert lrs["connector"] == pytest.approx(lr_at(100, peak=2e-4, warmup=200, total=1000,
                                                   final_fraction=0.1))
    assert lrs["vit"] == pytest.approx(6e-6 * 100 / 2000)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == lrs


def test_clipping_is_separate_per_group(model):
    cfg = dataclasses.replace(OptimConfig(), connector=GroupConfig(1e-4, 1, max_grad_norm=1.0),
                              vit=GroupConfig(1e-4, 1, max_grad_norm=0.0),
                              llm=GroupConfig(1e-4, 1, max_grad_norm=2.0))
    opt = build_optimizer(model, cfg)
    scale = {"connector": 10.0, "vit": 5.0, "llm": 1e-4}
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.full_like(p, scale[group["name"]])
    expected = {g["name"]: scale[g["name"]] * sum(p.numel() for p in g["params"]) ** 0.5
                for g in opt.param_groups}
    norms = clip_per_group(opt, cfg)
    assert norms == pytest.approx(expected, rel=1e-5)
    after = {g["name"]: torch.stack([p.grad.norm() for p in g["params"]]).norm().item()
             for g in opt.param_groups}
    assert after["connector"] == pytest.approx(1.0, rel=1e-4)  # clipped to its own limit
    assert after["vit"] == pytest.approx(expected["vit"], rel=1e-5)  # 0: never clipped
    assert after["llm"] == pytest.approx(expected["llm"], rel=1e-5)  # below its limit
