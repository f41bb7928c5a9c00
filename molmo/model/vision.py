"""CLIP ViT image encoder in Molmo's layout: pre-LN blocks, CLS token, multi-layer features.

Input crops arrive already cut into flattened 14x14x3 patches (``[crops, 576, 588]``), as the
official preprocessor produces them, so the patch embedding is a plain Linear without bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from molmo.model.config import VisionConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's GELU approximation; the released weights were trained with it."""
    return x * torch.sigmoid(1.702 * x)


class ViTAttention(nn.Module):
    """Multi-head self-attention with biases on q/k/v/o and no mask (all patches see all)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.wq = nn.Linear(cfg.width, cfg.width)
        self.wk = nn.Linear(cfg.width, cfg.width)
        self.wv = nn.Linear(cfg.width, cfg.width)
        self.wo = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, p, _ = x.shape  # [crops, positions, width]
        q = self.wq(x).view(n, p, self.heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(n, p, self.heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(n, p, self.heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # [crops, heads, positions, head_dim]
        return self.wo(y.transpose(1, 2).reshape(n, p, -1))


class ViTMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = ViTAttention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = ViTMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class VisionTransformer(nn.Module):
    """Returns the outputs of ``feature_layers`` concatenated on channels, CLS dropped.

    Blocks after the deepest requested layer are kept (their weights are part of the released
    checkpoints) but never run.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Linear(cfg.patch_dim, cfg.width, bias=False)
        self.class_embed = nn.Parameter(torch.empty(cfg.width))
        self.pos_embed = nn.Parameter(torch.empty(cfg.grid**2 + 1, cfg.width))
        self.pre_ln = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.layers))
        # Feature layers as non-negative block indices, in the order they are concatenated.
        self.feature_blocks = [i % cfg.layers for i in cfg.feature_layers]

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        n, p, _ = patches.shape  # [crops, 576, 588]
        if p != self.cfg.grid**2:
            raise ValueError(f"expected {self.cfg.grid**2} patches per crop, got {p}")
        x = self.patch_embed(patches)  # [crops, 576, width]
        cls = self.class_embed.to(x.dtype).expand(n, 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)  # [crops, 577, width]
        x = self.pre_ln(x)
        outputs = []
        for block in self.blocks[: max(self.feature_blocks) + 1]:
            x = block(x)
            outputs.append(x)
        features = torch.cat([outputs[i] for i in self.feature_blocks], dim=-1)
        return features[:, 1:]  # [crops, 576, width * len(feature_layers)]
