"""Batched greedy / sampled generation with a KV cache, stop token ids and stop strings.

Prompts of different lengths are LEFT-padded with -1 (``collate_prompts``) so every example's
next token sits in the last column; attention masks the padding and positions count only real
tokens, so a padded example generates what it would alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from molmo.model.molmo import Molmo
from pixmo.config import at_least, between, check_fields
from pixmo.errors import PixmoError

PAD_ID = -1


@dataclass
class GenerationConfig:
    """Greedy (temperature 0) or sampled with top-k / top-p, until a stop or the token limit."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()  # need a ``decode`` function
    use_cache: bool = True
    return_logits: bool = False

    def __post_init__(self) -> None:
        check_fields(self, max_new_tokens=at_least(1), temperature=at_least(0),
                     top_k=at_least(0), top_p=between(0, 1, open_low=True))  # 0 keeps nothing
        self.stop_token_ids = tuple(self.stop_token_ids)
        self.stop_strings = tuple(self.stop_strings)


@dataclass
class GenerationOutput:
    """What each prompt generated and why it ended."""

    tokens: list[list[int]]  # new tokens per example, stop token excluded
    finish_reasons: list[str]  # "stop_token" | "stop_string" | "length"
    step_logits: torch.Tensor | None = field(default=None, repr=False)  # [B, steps, vocab]


def collate_prompts(examples: Sequence[Mapping[str, np.ndarray | torch.Tensor]]
                    ) -> dict[str, torch.Tensor]:
    """Batch single-example arrays (official names, no batch dim) for generation.

    Text is left-padded with -1 (``image_input_idx`` shifted to match); crops are padded with
    -1 crops, ``image_input_idx`` with -100 and ``image_masks`` with -1, as the official code does.
    """
    ids = [torch.as_tensor(e["input_ids"]).long() for e in examples]
    width = max(len(i) for i in ids)
    batch = {"input_ids": torch.stack([
        torch.cat([torch.full((width - len(i),), PAD_ID, dtype=torch.long), i]) for i in ids])}
    if "images" not in examples[0]:
        return batch
    crops = max(len(e["images"]) for e in examples)
    images, masks, idx = [], [], []
    for e, i in zip(examples, ids, strict=True):
        img = torch.as_tensor(e["images"]).float()
        pad = crops - len(img)
        images.append(torch.cat([img, img.new_full((pad, *img.shape[1:]), -1.0)]))
        mask = torch.as_tensor(e["image_masks"]).float()
        masks.append(torch.cat([mask, mask.new_full((pad, *mask.shape[1:]), -1.0)]))
        pos = torch.as_tensor(e["image_input_idx"]).long()
        pos = torch.where(pos >= 0, pos + (width - len(i)), pos)
        idx.append(torch.cat([pos, pos.new_full((pad, *pos.shape[1:]), -100)]))
    batch.update(images=torch.stack(images), image_masks=torch.stack(masks),
                 image_input_idx=torch.stack(idx))
    return batch


def _left_align(ids: torch.Tensor, image_input_idx: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Move trailing -1 padding (a training-style right-padded batch) to the left."""
    trailing = (ids != PAD_ID).flip(1).long().cummax(1).values.eq(0).sum(1)  # [B]
    if not bool(trailing.any()):
        return ids, image_input_idx
    ids = torch.stack([row.roll(int(t)) for row, t in zip(ids, trailing, strict=True)])
    if image_input_idx is not None:
        shift = trailing.view(-1, *[1] * (image_input_idx.dim() - 1)).to(image_input_idx.device)
        image_input_idx = torch.where(image_input_idx >= 0, image_input_idx + shift,
                                      image_input_idx)
    return ids, image_input_idx


def _choose(logits: torch.Tensor, cfg: GenerationConfig,
            generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row from last-position logits [B, V]."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > cfg.top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: Molmo, input_ids: torch.Tensor, images: torch.Tensor | None = None,
             image_masks: torch.Tensor | None = None,
             image_input_idx: torch.Tensor | None = None,
             config: GenerationConfig | None = None, *,
             decode: Callable[[list[int]], str] | None = None,
             generator: torch.Generator | None = None) -> GenerationOutput:
    """Continue each prompt (rows of ``input_ids`` padded with -1; right padding is moved to
    the left first) until a stop or ``max_new_tokens``. Without the cache every step reruns the
    full forward (a reference path)."""
    cfg = config or GenerationConfig()
    if cfg.stop_strings and decode is None:
        raise PixmoError("stop_strings need a decode function", field="stop_strings")
    batch, prompt_len = input_ids.shape
    device = model.llm.lm_head.weight.device
    ids, image_input_idx = _left_align(input_ids, image_input_idx)
    ids = ids.to(device)
    image_args = {"images": images, "image_masks": image_masks,
                  "image_input_idx": image_input_idx}
    image_args = {k: v.to(device) if v is not None else None for k, v in image_args.items()}
    cache = model.llm.new_cache(batch, prompt_len + cfg.max_new_tokens) if cfg.use_cache else None

    tokens: list[list[int]] = [[] for _ in range(batch)]
    reasons = ["length"] * batch
    finished = [False] * batch
    step_logits = []
    logits = model(ids, **image_args, cache=cache)[:, -1]  # prefill: [B, V]
    for step in range(cfg.max_new_tokens):
        if cfg.return_logits:
            step_logits.append(logits.float().cpu())
        new = _choose(logits, cfg, generator).tolist()  # [B]
        for b, token in enumerate(new):
            if finished[b]:
                new[b] = PAD_ID  # finished rows run on padding so the batch stays rectangular
            elif token in cfg.stop_token_ids:
                reasons[b], finished[b] = "stop_token", True
                new[b] = PAD_ID
            else:
                tokens[b].append(token)
                if decode is not None and any(s in decode(tokens[b]) for s in cfg.stop_strings):
                    reasons[b], finished[b] = "stop_string", True
        if all(finished) or step == cfg.max_new_tokens - 1:
            break
        step_ids = torch.tensor(new, device=device)[:, None]  # [B, 1]
        if cache is not None:
            logits = model(step_ids, cache=cache)[:, -1]
        else:
            ids = torch.cat([ids, step_ids], dim=1)
            logits = model(ids, **image_args)[:, -1]
    return GenerationOutput(tokens, reasons,
                            torch.stack(step_logits, dim=1) if cfg.return_logits else None)
