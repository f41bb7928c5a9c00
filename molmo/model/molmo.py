"""The Molmo model: ViT -> connector -> image features ADDED to ``<im_patch>`` embeddings -> LLM.

``forward`` takes the official input names and shapes (``input_ids`` padded with -1, ``images``
``[B, crops, 576, 588]`` padded with -1 crops, ``image_masks``, ``image_input_idx`` with -100 for
dropped tokens) and returns logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from molmo.model.config import MolmoConfig
from molmo.model.connector import Connector
from molmo.model.llm import Decoder, KVCache, RMSNorm
from molmo.model.vision import VisionTransformer

IGNORE_INDEX = -100


class Molmo(nn.Module):
    def __init__(self, cfg: MolmoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = VisionTransformer(cfg.vision)
        self.connector = Connector(cfg.vision, cfg.connector, cfg.llm.d_model)
        self.llm = Decoder(cfg.llm)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Random init for training from scratch (a no-op on the meta device).

        Matrices are N(0, 1/fan_in) and token embeddings N(0, 1), so activations are of
        order 1 at every stage. A fixed small std (0.02) would starve the image path of
        small models: the connector's SwiGLU multiplies two near-zero branches, so image
        features and their gradients start orders of magnitude below the text's.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=module.in_features ** -0.5)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for p in (self.llm.embed.base, self.llm.embed.extra):
            nn.init.normal_(p, std=1.0)
        for p in (self.vision.class_embed, self.vision.pos_embed):
            nn.init.normal_(p, std=0.5)
        if self.connector.pad_embed is not None:
            nn.init.zeros_(self.connector.pad_embed)

    def image_features(self, images: torch.Tensor, image_masks: torch.Tensor | None
                       ) -> torch.Tensor:
        """[B, crops, 576, 588] pixels -> [B, crops, 144, d_model] tokens for the LLM."""
        b, t, p, d = images.shape
        crops = images.reshape(b * t, p, d).to(self.vision.patch_embed.weight.dtype)
        real_crop = ~(crops == -1).all(dim=2).all(dim=1)  # padding crops are all -1
        features = self.vision(crops) * real_crop[:, None, None]  # [B*crops, 576, feature_dim]
        return self.connector(features.view(b, t, p, -1), image_masks)

    def forward(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
                image_masks: torch.Tensor | None = None,
                image_input_idx: torch.Tensor | None = None, *,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                subsegment_ids: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Logits [B, L, embedding_size]. Padding is ``input_ids == -1`` unless
        ``attention_mask`` [B, L] (1 = real token) is given. ``subsegment_ids`` and
        ``position_ids`` [B, L] describe multi-annotation packing as in the official training
        code (a query sees a key only if its subsegment id is <= the key's)."""
        valid = attention_mask.bool() if attention_mask is not None else input_ids != -1
        x = self.llm.embed(input_ids.clamp(min=0))  # [B, L, d_model]
        if images is not None:
            if image_input_idx is None:
                raise ValueError("images given without image_input_idx")
            b = input_ids.shape[0]
            features = self.image_features(images, image_masks).to(x.dtype)
            features = features.reshape(b, -1, x.shape[-1])  # [B, crops*144, d_model]
            idx = image_input_idx.reshape(b, -1).long()  # [B, crops*144]
            if idx.shape[1] != features.shape[1]:
                raise ValueError(f"image_input_idx has {idx.shape[1]} entries per example, "
                                 f"image features {features.shape[1]}")
            keep = idx >= 0
            rows = torch.arange(b, device=idx.device)[:, None].expand_as(idx)
            x = x.index_put((rows[keep], idx[keep]), features[keep], accumulate=True)
        if subsegment_ids is not None and bool(
                (subsegment_ids[:, 1:] <= subsegment_ids[:, :-1]).all()):
            subsegment_ids = None  # non-increasing ids allow every causal pair: plain causal
        # Right padding only (or none) leaves every real token's causal context intact, so
        # the fast plain-causal attention path applies; other padding (left padding, or any
        # padding written into a KV cache) needs a mask.
        right_only = bool((valid[:, 1:] <= valid[:, :-1]).all())
        if right_only and (cache is None or bool(valid.all())):
            return self.llm(x, None, position_ids, cache, subsegment_ids)
        return self.llm(x, valid, position_ids, cache, subsegment_ids)


def token_loss(logits: torch.Tensor, labels: torch.Tensor,
               weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy (fp32) and the number of supervised tokens.

    ``labels`` [B, L] are already the targets of each position (-100 = not supervised). Returning
    the sum lets the training loop divide by the global token count across ranks.
    """
    losses = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                             ignore_index=IGNORE_INDEX, reduction="none")
    supervised = labels.flatten() != IGNORE_INDEX
    if weights is not None:
        losses = losses * weights.flatten().to(losses.dtype)
    return losses.sum(), supervised.sum()
