"""Vision-language connector: padding embeddings, 2x2 attention pooling, SwiGLU projector.

Turns ViT patch features ``[B, crops, 576, 2*width]`` into LLM-width tokens
``[B, crops, 144, d_model]`` that the model adds onto the ``<im_patch>`` embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from molmo.model.config import ConnectorConfig, VisionConfig
from molmo.model.llm import SwiGLU


class AttentionPool(nn.Module):
    """One query (the window mean) attends over the window's vectors; no norm, no residual."""

    def __init__(self, in_dim: int, cfg: ConnectorConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.pool_heads, cfg.pool_head_dim
        self.wq = nn.Linear(in_dim, cfg.pool_dim)
        self.wk = nn.Linear(in_dim, cfg.pool_dim)
        self.wv = nn.Linear(in_dim, cfg.pool_dim)
        self.wo = nn.Linear(cfg.pool_dim, cfg.pool_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        n, w, _ = windows.shape  # [windows, 4, in_dim]
        query = windows.mean(dim=1, keepdim=True)  # [windows, 1, in_dim]
        q = self.wq(query).view(n, 1, self.heads, self.head_dim).transpose(1, 2)
        k = self.wk(windows).view(n, w, self.heads, self.head_dim).transpose(1, 2)
        v = self.wv(windows).view(n, w, self.heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # [windows, heads, 1, head_dim]
        return self.wo(y.transpose(1, 2).reshape(n, -1))  # [windows, pool_dim]


class Connector(nn.Module):
    def __init__(self, vision: VisionConfig, cfg: ConnectorConfig, d_model: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = vision.grid
        # Row 0: added where a patch is all padding; row 1: where it is partly padding.
        self.pad_embed = (nn.Parameter(torch.empty(2, vision.feature_dim)) if cfg.pad_embed
                          else None)
        self.pool = AttentionPool(vision.feature_dim, cfg)
        self.projector = SwiGLU(cfg.pool_dim, cfg.projector_hidden, d_model)

    def forward(self, features: torch.Tensor, image_masks: torch.Tensor | None) -> torch.Tensor:
        b, t, p, c = features.shape  # [B, crops, 576, feature_dim]
        if self.pad_embed is not None and image_masks is not None:
            # Official quirk kept: mask -1 (a padded crop's row) counts as "partial".
            all_pad = (image_masks == 0).to(features.dtype)[..., None]  # [B, crops, 576, 1]
            partial = ((image_masks < 1) & (image_masks != 0)).to(features.dtype)[..., None]
            pad = self.pad_embed.to(features.dtype)
            features = features + pad[0] * all_pad
            features = features + pad[1] * partial
        s, g = self.cfg.pool_size, self.grid // self.cfg.pool_size
        windows = (features.reshape(b * t, g, s, g, s, c)  # [B*crops, 12, 2, 12, 2, C]
                   .permute(0, 1, 3, 2, 4, 5)  # window rows/cols first, (dh, dw) inside
                   .reshape(b * t * g * g, s * s, c))  # [B*crops*144, 4, C]
        pooled = self.pool(windows)  # [B*crops*144, pool_dim]
        return self.projector(pooled).view(b, t, g * g, -1)  # [B, crops, 144, d_model]
