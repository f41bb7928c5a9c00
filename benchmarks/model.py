"""Forward+backward speed of our attention path against the official dense float mask.

Both models have identical weights; the baseline only sets ``dense_attention_mask=True``, which
builds a [B, 1, L, L] float mask (0 / finfo.min) for every forward, as the official Molmo code
does, while our path calls SDPA with ``is_causal=True`` and no mask tensor. Runs are interleaved
and the median is reported, so both share the same machine noise.

    python benchmarks/model.py                                   # CPU, preset "small"
    python benchmarks/model.py --device cuda --dtype bf16        # also tokens/s and MFU, dense-1b
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from molmo.model.config import preset
from molmo.model.molmo import Molmo, token_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _build(name: str, dense: bool, device: str, dtype: torch.dtype) -> Molmo:
    cfg = preset(name)
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, dense_attention_mask=dense))
    torch.manual_seed(0)
    with torch.device(device):
        return Molmo(cfg).to(dtype).train()


def _step(model: Molmo, ids: torch.Tensor, labels: torch.Tensor) -> float:
    loss_sum, count = token_loss(model(ids), labels)
    (loss_sum / count).backward()
    model.zero_grad(set_to_none=True)
    return float(loss_sum.detach())


def compare(name: str, device: str, dtype: torch.dtype, batch: int, seq: int,
            repeats: int) -> dict[str, float]:
    """Median seconds per forward+backward for our path and the dense-mask baseline."""
    ours, dense = _build(name, False, device, dtype), _build(name, True, device, dtype)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, ours.cfg.llm.vocab_size, (batch, seq), generator=gen).to(device)
    labels = ids.roll(-1, dims=1)
    loss_ours, loss_dense = _step(ours, ids, labels), _step(dense, ids, labels)
    if abs(loss_ours - loss_dense) > 1e-4 * abs(loss_ours):
        raise RuntimeError(f"the two attention paths disagree: loss {loss_ours} vs {loss_dense}")
    times: dict[str, list[float]] = {"ours": [], "dense": []}
    for _ in range(repeats):
        for key, model in (("ours", ours), ("dense", dense)):
            _sync(device)
            start = time.perf_counter()
            _step(model, ids, labels)
            _sync(device)
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def llm_flops_per_token(model: Molmo, seq: int) -> float:
    """Training FLOPs per token of the text-only LLM: 6 x matmul params (embedding lookups
    excluded, LM head included) + causal attention scores/values (6 x layers x d_model x seq)."""
    llm = model.cfg.llm
    n = sum(p.numel() for p in model.llm.parameters()) - model.llm.embed.base.numel() \
        - model.llm.embed.extra.numel()
    return 6 * n + 6 * llm.layers * llm.d_model * seq


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpu-preset", default="dense-1b")
    parser.add_argument("--gpu-batch", type=int, default=4)
    parser.add_argument("--gpu-seq", type=int, default=2048)
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="accelerator peak dense bf16 TFLOP/s (H100 SXM: 989)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    torch.set_grad_enabled(True)

    result: dict[str, object] = vars(args).copy()
    t = compare(args.preset, args.device, dtype, args.batch, args.seq, args.repeats)
    result.update(ours_s=t["ours"], dense_s=t["dense"], ratio=t["dense"] / t["ours"])
    print(f"{args.preset} fwd+bwd B={args.batch} L={args.seq} {args.device} {args.dtype}: "
          f"ours {t['ours'] * 1e3:.1f} ms, dense float mask {t['dense'] * 1e3:.1f} ms, "
          f"speedup {t['dense'] / t['ours']:.2f}x")

    if args.device.startswith("cuda"):
        t = compare(args.gpu_preset, args.device, dtype, args.gpu_batch, args.gpu_seq,
                    args.repeats)
        tokens = args.gpu_batch * args.gpu_seq
        model = _build(args.gpu_preset, False, "meta", dtype)
        flops = llm_flops_per_token(model, args.gpu_seq)
        for key in ("ours", "dense"):
            tps = tokens / t[key]
            mfu = tps * flops / (args.peak_tflops * 1e12)
            result[f"{args.gpu_preset}_{key}_tokens_per_s"] = tps
            result[f"{args.gpu_preset}_{key}_mfu"] = mfu
            print(f"{args.gpu_preset} train step B={args.gpu_batch} L={args.gpu_seq}: {key} "
                  f"{tps:,.0f} tokens/s, MFU {mfu:.1%} of {args.peak_tflops:g} TFLOP/s")
        result["gpu_ratio"] = t["dense"] / t["ours"]
        print(f"{args.gpu_preset} speedup over dense float mask: {t['dense'] / t['ours']:.2f}x; "
              f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
