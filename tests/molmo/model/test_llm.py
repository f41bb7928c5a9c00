"""The language decoder: attention paths (no mask tensor unless one is needed), right padding,
RoPE, RMSNorm, the shared SwiGLU and the OLMoE routing."""

from __future__ import annotations

import pytest
import torch

from molmo.model.config import LLMConfig
from molmo.model.llm import MoEMLP, RMSNorm, SwiGLU, apply_rope, rope_cos_sin
from tests.molmo.model.test_molmo import _random_model


def test_plain_causal_cases_pass_no_mask_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """SDPA gets is_causal=True and no mask unless padding or packing really needs one."""
    seen: list[tuple[str, bool]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kwargs):
        if "enable_gqa" in kwargs:  # the LLM's calls (the ViT and pooling never mask)
            kind = "none" if attn_mask is None else str(attn_mask.dtype).split(".")[-1]
            seen.append((kind, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model, layers = _random_model("tiny"), 2

    def paths(*args: object, **kwargs: object) -> set[tuple[str, bool]]:
        seen.clear()
        with torch.no_grad():
            model(*args, **kwargs)
        assert len(seen) == layers
        return set(seen)

    ids = torch.tensor([[500, 3, 17, 250], [500, 12, -1, -1]])
    assert paths(ids[:1]) == {("none", True)}
    assert paths(ids) == {("none", True)}  # right padding
    assert paths(ids.flip(1)) == {("bool", False)}  # left padding
    one_conversation = torch.tensor([[10000, 10000, 0, 0]])
    assert paths(ids[:1], subsegment_ids=one_conversation) == {("none", True)}
    assert paths(ids[:1], subsegment_ids=torch.tensor([[10000, 0, 1, 1]])) == {("bool", False)}
    cache = model.llm.new_cache(1, 8)
    paths(ids[:1], cache=cache)
    assert paths(torch.tensor([[7]]), cache=cache) == {("none", False)}  # decode step
    model.llm.cfg.dense_attention_mask = True
    assert paths(ids[:1]) == {("float32", False)}


def test_right_padding_keeps_real_token_logits() -> None:
    model = _random_model("tiny")
    ids = torch.tensor([[500, 3, 17, 250, 9, 44]])
    padded = torch.cat([ids, torch.full((1, 3), -1)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded)[:, :6], model(ids), atol=2e-5, rtol=1e-5)


def test_moe_mlp_matches_per_token_reference() -> None:
    cfg = LLMConfig(d_model=16, layers=1, heads=2, kv_heads=2, mlp_hidden=8, vocab_size=32,
                    embedding_size=32, moe_experts=6, moe_top_k=2, qkv_bias=False)
    torch.manual_seed(0)
    moe = MoEMLP(cfg)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        got = moe(x)
        probs = torch.softmax(moe.router(x).float(), dim=-1)  # softmax BEFORE top-k
        expected = torch.zeros_like(x)
        for b in range(2):
            for t in range(5):
                weights, chosen = probs[b, t].topk(2)
                for w, e in zip(weights, chosen, strict=True):  # weights not renormalised
                    expected[b, t] += w * moe.experts[int(e)](x[b, t])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert float(probs.topk(2).values.sum(-1).max()) < 1


def test_moe_backward_reaches_every_expert() -> None:
    model = _random_model("tiny-moe")
    logits = model(torch.tensor([[500, 3, 17]]))
    logits.sum().backward()
    grads = [e.gate.weight.grad for e in model.llm.blocks[0].mlp.experts]
    assert all(g is not None for g in grads)  # unused experts get zero, not None (DDP-safe)


def test_swiglu_is_down_of_silu_gate_times_up() -> None:
    torch.manual_seed(0)
    mlp = SwiGLU(4, 6, 3)
    x = torch.randn(5, 4)
    gate, up, down = mlp.gate.weight, mlp.up.weight, mlp.down.weight
    expected = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T
    torch.testing.assert_close(mlp(x), expected)
    assert mlp.gate.bias is None and mlp.down.weight.shape == (3, 6)


def test_rmsnorm_scales_to_unit_root_mean_square() -> None:
    norm = RMSNorm(4, eps=0.0)
    x = torch.tensor([[3.0, -3.0, 3.0, -3.0], [1.0, 2.0, 2.0, 4.0]])
    out = norm(x)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(2))
    torch.testing.assert_close(out[0], torch.tensor([1.0, -1.0, 1.0, -1.0]))


def test_rope_keeps_norms_and_makes_scores_depend_on_distance_only() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i: int, j: int) -> float:
        cos, sin = rope_cos_sin(torch.tensor([[i, j]]), 8, 10000.0)
        rq = apply_rope(q, cos[:, :, :1], sin[:, :, :1])
        rk = apply_rope(k, cos[:, :, 1:], sin[:, :, 1:])
        torch.testing.assert_close(rq.norm(), q.norm())
        return float((rq * rk).sum())

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)
    cos, sin = rope_cos_sin(torch.zeros(1, 1), 8, 10000.0)
    torch.testing.assert_close(apply_rope(q, cos, sin), q)  # position 0 is the identity
