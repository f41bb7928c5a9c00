"""The language decoder: one block type for Qwen2, OLMo-1024 and OLMoE, KV cache included.

Qwen2 is pre-norm with qkv bias, OLMo-1024 post-norm with QK-norm, and OLMoE (a mixture-of-experts
MLP swapped in for the dense one).

Attention goes through ``F.scaled_dot_product_attention`` with ``is_causal=True`` whenever the mask
is plain causal (no padding, or right padding only); a boolean mask is built only for left
padding, a padded KV cache or packed subsegments. ``dense_attention_mask`` forces the official
float-mask approach (kept as the benchmark baseline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from molmo.model.config import LLMConfig


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, affine weight only (the official ``LayerNorm(type=rms)``)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama/NeoX rotary tables for explicit positions: [B, L] -> two [B, 1, L, head_dim], fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device,
                                             dtype=torch.float) / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # [B, L, head_dim/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # [B, 1, L, head_dim]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    h = x.float()
    x1, x2 = h.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (h * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Preallocated keys/values for all layers, plus which cached positions are real tokens."""

    def __init__(self, cfg: LLMConfig, batch: int, max_len: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        shape = (cfg.layers, batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch, max_len, device=device, dtype=torch.bool)
        self.positions = torch.zeros(batch, device=device, dtype=torch.long)  # next position id
        self.length = 0
        self.padded = False  # any cached position is padding: decode steps then need a mask
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        q_dim, kv_dim = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        self.split = (q_dim, kv_dim, kv_dim)
        self.qkv = nn.Linear(cfg.d_model, q_dim + 2 * kv_dim, bias=cfg.qkv_bias)
        self.out = nn.Linear(q_dim, cfg.d_model, bias=False)
        # QK-norm (OLMo): over the full q and k projections, before the head split and RoPE.
        self.q_norm = RMSNorm(q_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(kv_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, is_causal: bool, cache: KVCache | None,
                layer: int) -> torch.Tensor:
        b, n, _ = x.shape  # [B, L, d_model]
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # [B, heads, L, hd]
        k = k.view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)  # [B, kv_heads, L, hd]
        v = v.view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # [B, kv_heads, past+L, hd]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           enable_gqa=self.kv_heads != self.heads)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))  # [B, L, d_model]


class DenseMLP(nn.Module):
    """SwiGLU with one fused input projection laid out [up | gate], as in the official blocks."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.up_gate = nn.Linear(cfg.d_model, 2 * cfg.mlp_hidden, bias=False)
        self.down = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, gate = self.up_gate(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class SwiGLU(nn.Module):
    """SwiGLU without biases, separate gate and up: down(silu(gate x) * up x). One MoE expert,
    and the connector's projector into the LLM width."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(in_dim, hidden, bias=False)
        self.up = nn.Linear(in_dim, hidden, bias=False)
        self.down = nn.Linear(hidden, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoEMLP(nn.Module):
    """OLMoE token-choice MoE: fp32 softmax over all experts, then top-k, NOT renormalised.

    Every expert runs (possibly on zero tokens) so all parameters join the autograd graph,
    which DDP and FSDP expect. No auxiliary loss: Molmo trained MolmoE without one.
    """

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.top_k = cfg.moe_top_k
        self.router = nn.Linear(cfg.d_model, cfg.moe_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(cfg.d_model, cfg.mlp_hidden, cfg.d_model)
                                     for _ in range(cfg.moe_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # [N, d_model]
        probs = self.router(tokens).float().softmax(dim=-1)  # [N, experts]
        weights, chosen = probs.topk(self.top_k, dim=-1)  # [N, top_k]
        # Group the N*top_k (token, expert) pairs by expert: one host sync for the counts.
        order = chosen.flatten().argsort(stable=True)  # [N*top_k]
        rows = order // self.top_k  # token of each grouped pair
        counts = torch.bincount(chosen.flatten(), minlength=len(self.experts)).tolist()
        groups = rows.split(counts)
        ys = [expert(tokens[g]) for expert, g in zip(self.experts, groups, strict=True)]
        y = torch.cat(ys) * weights.flatten()[order, None].to(x.dtype)  # [N*top_k, d_model]
        return torch.zeros_like(tokens).index_add(0, rows, y).view(shape)


class Block(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.norm_after = cfg.norm_after
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp: nn.Module = MoEMLP(cfg) if cfg.moe_experts else DenseMLP(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, is_causal: bool, cache: KVCache | None,
                layer: int) -> torch.Tensor:
        if self.norm_after:  # OLMo-1024: normalise each sublayer's output
            x = x + self.attn_norm(self.attn(x, rope, mask, is_causal, cache, layer))
            return x + self.mlp_norm(self.mlp(x))
        x = x + self.attn(self.attn_norm(x), rope, mask, is_causal, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class Embedding(nn.Module):
    """The base vocabulary table plus the extra rows Molmo appends for its image tokens."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.base = nn.Parameter(torch.empty(cfg.embedding_size, cfg.d_model))
        self.extra = nn.Parameter(torch.empty(cfg.additional_vocab_size, cfg.d_model))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = self.base.shape[0]
        x = F.embedding(ids.clamp(max=n - 1), self.base)  # [B, L, d_model]
        if self.extra.shape[0]:
            extra = F.embedding((ids - n).clamp(min=0), self.extra)
            x = torch.where((ids >= n)[..., None], extra, x)
        return x


def attention_mask(valid: torch.Tensor | None, q_len: int, k_len: int, dense: bool,
                   device: torch.device, dtype: torch.dtype,
                   subsegments: torch.Tensor | None = None) -> tuple[torch.Tensor | None, bool]:
    """(mask, is_causal) for SDPA. ``valid`` [B, k_len] marks real keys (None: all real).

    Plain causal needs no tensor at all; the last ``q_len`` of ``k_len`` positions are queries.
    ``subsegments`` [B, L] (multi-annotation packing) further allows a key only when
    subsegment(query) <= subsegment(key). A query may always see itself, so no softmax row is
    empty (padding queries).
    """
    if valid is None and subsegments is None and not dense:
        if q_len == k_len:
            return None, True
        if q_len == 1:
            return None, False
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None]
    allowed = (k_pos <= q_pos)[None, None]  # [1, 1, Lq, Lk]
    if valid is not None:
        allowed = allowed & valid[:, None, None, :]  # [B, 1, Lq, Lk]
    if subsegments is not None:
        allowed = allowed & (subsegments[:, None, :, None] <= subsegments[:, None, None, :])
    if valid is not None or subsegments is not None:
        allowed = allowed | (k_pos == q_pos)
    if dense:
        return torch.zeros(allowed.shape, device=device, dtype=dtype).masked_fill(
            ~allowed, torch.finfo(dtype).min), False
    return allowed, False


class Decoder(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.embedding_size, bias=False)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        w = self.lm_head.weight
        return KVCache(self.cfg, batch, max_len, w.device, w.dtype)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                subsegment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Embedded inputs [B, L, d_model] -> logits [B, L, embedding_size].

        ``valid`` [B, L] bool marks real tokens (None: all real). Default positions count real
        tokens only, continuing from the cache, as the official code does.
        """
        b, n, _ = x.shape
        if subsegment_ids is not None and cache is not None:
            raise ValueError("subsegment_ids cannot be combined with a KV cache")
        past = cache.length if cache is not None else 0
        if past + n > (cache.max_len if cache is not None else self.cfg.max_seq_len):
            raise ValueError(f"sequence of {past + n} tokens exceeds the limit "
                             f"{cache.max_len if cache is not None else self.cfg.max_seq_len}")
        real = valid if valid is not None else torch.ones(b, n, dtype=torch.bool,
                                                          device=x.device)
        if position_ids is None:
            start = cache.positions[:, None] if cache is not None else 0
            position_ids = (start + real.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]
        key_valid = valid
        if cache is not None:
            cache.valid[:, past:past + n] = real
            cache.positions = position_ids[:, -1] + 1
            cache.padded = cache.padded or valid is not None
            key_valid = cache.valid[:, :past + n] if cache.padded else None
        mask, is_causal = attention_mask(key_valid, n, past + n, self.cfg.dense_attention_mask,
                                         x.device, x.dtype, subsegment_ids)
        rope = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, is_causal, cache, i)
        if cache is not None:
            cache.length += n
        return self.lm_head(self.norm(x))
