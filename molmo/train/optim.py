"""The optimizer: connector, ViT and LLM parameter groups under AdamW, clipped per group.

Parameter groups (connector, ViT, LLM), AdamW, per-group learning rates and per-group
gradient clipping, as the official multimodal recipe does (reference ``molmo.md`` 7.1).

Each group's gradient norm is computed and clipped on its own, so a noisy connector early in
training cannot shrink the LLM's update. Norms work on sharded (FSDP2 DTensor) gradients too.
"""

from __future__ import annotations

import torch
from torch import nn

from molmo.model.molmo import Molmo
from molmo.train.config import GROUPS, OptimConfig
from molmo.train.schedule import lr_at

_PREFIX = {"vision.": "vit", "connector.": "connector", "llm.": "llm"}


def group_of(name: str) -> str:
    """The group of a parameter of :class:`Molmo` by its name."""
    for prefix, group in _PREFIX.items():
        if name.startswith(prefix):
            return group
    raise ValueError(f"parameter {name!r} belongs to no optimizer group")


def freeze(model: Molmo, cfg: OptimConfig) -> None:
    """Freeze the configured groups, and the ViT blocks past the deepest feature layer (they
    never run, so they would get no gradient and DDP would wait for one)."""
    for name, p in model.named_parameters():
        if getattr(cfg, group_of(name)).frozen:
            p.requires_grad_(False)
    for block in model.vision.blocks[max(model.vision.feature_blocks) + 1:]:
        block.requires_grad_(False)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` (a Molmo, possibly FSDP-sharded), one
    param group per component; learning rates are set every step by :func:`set_lrs`."""
    params: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for name, p in model.named_parameters():
        if p.requires_grad:
            params[group_of(name)].append(p)
    groups = [{"name": g, "params": ps, "lr": 0.0} for g, ps in params.items() if ps]
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, eps=cfg.eps,
                             weight_decay=cfg.weight_decay)


def set_lrs(optimizer: torch.optim.Optimizer, cfg: OptimConfig, step: int,
            total: int) -> dict[str, float]:
    """Set each group's learning rate for optimizer step ``step``; returns them by group."""
    lrs = {}
    for group in optimizer.param_groups:
        g = getattr(cfg, group["name"])
        group["lr"] = lrs[group["name"]] = lr_at(step, peak=g.lr, warmup=g.warmup_steps,
                                                 total=total,
                                                 final_fraction=cfg.final_lr_fraction)
    return lrs


def clip_per_group(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> dict[str, float]:
    """Clip each group's gradients to its ``max_grad_norm``; returns the norms before."""
    norms = {}
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if hasattr(norm, "full_tensor"):  # DTensor: the norm over all shards
            norm = norm.full_tensor()
        max_norm = getattr(cfg, group["name"]).max_grad_norm
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
        norms[group["name"]] = float(norm)
    return norms
