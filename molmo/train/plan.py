"""What a training run needs in memory, per device, before it runs (``molmo plan CONFIG``).

What the loop keeps (``loop.py``, ``optim.py``, ``parallel.py``): parameters in fp32 always
(they are the master weights; bf16 runs cast them per op by autocast, or per block by FSDP2's
mixed-precision policy, so there is no separate master copy); gradients in fp32 for trainable
parameters only, set to None after each step; AdamW's two fp32 moments for trainable parameters.
FSDP over N devices divides parameters, gradients and moments by N and holds, in the compute
dtype, one unsharded block plus the next one prefetched, and the root's parameters (those
outside the blocks: embeddings, LM head, connector...), which FSDP2 keeps unsharded from the
forward to the backward pass (the tests measure this in two real processes, FSDP2 over gloo).
LoRA (peft) leaves the base frozen: its gradients and moments exist for the adapters only.

The step's peak is the larger of two moments: the start of the backward pass (parameters,
moments, every saved activation and the loss head's gradients; the previous step set the
gradients to None) and the optimizer step (parameters, gradients, moments, and the foreach
AdamW's temporary square roots of one parameter group: it steps group by group).

Activations of a micro-batch of B examples, L tokens and C crops (T = B C (P + 1) ViT tokens
for P patches a crop, B C P / 4 pooled tokens), in elements, as autograd saves them (counted
with ``torch.autograd.graph.saved_tensors_hooks`` on our modules):

* LLM block, per token: ``6 d + 3 q + 3 kv + heads + 4 h`` (d model width, q and kv the
  query and key/value widths, h the SwiGLU hidden): each RMSNorm's input, inverse RMS,
  normalised and scaled outputs; the qkv output; q and k after RoPE; attention output and its
  log-sum-exp; SwiGLU's up|gate output, silu and product. LoRA (norm weights frozen) saves
  ``2 d`` less. MoE replaces ``4 h`` by ``top_k (4 h + 2 d) + 2 experts + d``.
* ViT block (those up to the deepest feature layer), per ViT token:
  ``8 w + 3 m + heads + 4`` (w width, m MLP hidden).
* Image path outside the blocks: ``3 w`` per ViT token, and per pooled token
  ``4 f + 4.5 pool + 4 projector`` (f the concatenated feature width).
* Loss head: ``5 V`` fp32 values per token at the start of the backward pass (logits,
  log-softmax, logsumexp input and their gradients), V the logits' width; embeddings and the
  final norm ``3 d`` per token; the batch itself (crops in fp32, five int64 rows).

With activation checkpointing (every ViT and LLM block recomputed) a block keeps only its
input, and the backward pass holds at once either the loss head or one recomputed block.
With LoRA the ViT and connector save nothing unless targeted (nothing before them trains).
Activations take the compute dtype's bytes (bf16 on GPU: 2, fp32 on CPU: 4), the head fp32.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from molmo.model.config import MolmoConfig
from molmo.model.molmo import Molmo
from molmo.train.config import GROUPS, LoraConfig, TrainConfig
from pixmo.errors import PixmoError

FP32 = 4
UNITS = {"": 1, "B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
         "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
MAX_BATCH = 1 << 16


def parse_size(text: str) -> int:
    """``80GiB``, ``141GB``, ``512MiB`` or a number of bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].upper() not in UNITS:
        raise PixmoError(f"not a memory size: {text!r} (e.g. 80GiB)", field="--gpu-memory")
    return int(float(match[1]) * UNITS[match[2].upper()])


@dataclass(frozen=True)
class Shapes:
    """What one micro-batch holds: examples, tokens per example, crops per example."""

    batch: int
    seq_len: int
    crops: int


@dataclass(frozen=True)
class Plan:
    """Bytes per device for one way of running (``mode``)."""

    mode: str  # "full", "fsdp/N", "lora"
    devices: int
    params: int
    grads: int
    optimizer: int
    activations: int  # per micro-batch of ``shapes.batch`` examples
    checkpointing: bool
    peak: int
    max_micro_batch: int | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def model_config(cfg: TrainConfig) -> MolmoConfig:
    """The run's architecture, read without loading any weights."""
    section = cfg.model
    if section.checkpoint is not None:
        from molmo.model.weights import read_config

        return read_config(section.checkpoint)[0]
    if section.llm is not None and section.vision is not None:
        from molmo.model.parts import plan_parts

        return plan_parts(section.llm, section.vision, section.overrides).cfg
    return section.molmo_config()


def _meta_model(cfg: MolmoConfig) -> Molmo:
    with torch.device("meta"):
        return Molmo(cfg)


def _counts(cfg: TrainConfig, model: Molmo) -> dict[str, int]:
    """Parameters: all, trainable in full fine-tuning (``optim.freeze``) and with LoRA
    (``r (in + out)`` per targeted linear layer), and the largest block (FSDP's unit)."""
    from molmo.train.lora import target_pattern
    from molmo.train.optim import freeze, group_of

    total = sum(p.numel() for p in model.parameters())
    blocks = [sum(p.numel() for p in b.parameters())
              for b in [*model.vision.blocks, *model.llm.blocks]]
    adapters = 0
    if cfg.lora is not None:
        pattern = re.compile(target_pattern(cfg.lora, model))
        adapters = sum(cfg.lora.rank * (m.in_features + m.out_features)
                       for name, m in model.named_modules()
                       if isinstance(m, nn.Linear) and pattern.fullmatch(name))
    freeze(model, cfg.optim)
    groups = {g: 0 for g in GROUPS}
    for name, p in model.named_parameters():
        groups[group_of(name)] += p.numel() if p.requires_grad else 0
    return {"total": total, "full": sum(groups.values()), "full_group": max(groups.values()),
            "lora": adapters, "lora_group": adapters, "block": max(blocks),
            "outside_blocks": total - sum(blocks)}


def _image_path(cfg: TrainConfig, mode: str) -> bool:
    """Whether the ViT and connector save activations: something in them trains."""
    if mode == "lora":
        assert cfg.lora is not None
        return any(t.startswith(("vision.", "connector")) for t in cfg.lora.targets)
    return not (cfg.optim.vit.frozen and cfg.optim.connector.frozen)


def _crops(cfg: TrainConfig) -> int:
    """Crops per example at most: the global crop plus ``max_crops`` tiles."""
    return (cfg.data.max_crops or cfg.preprocess.max_crops) + 1


def _llm_block(cfg: MolmoConfig, frozen: bool) -> int:
    """Elements one LLM block saves per token (``frozen``: norm weights frozen, LoRA)."""
    c = cfg.llm
    q, kv = c.heads * c.head_dim, c.kv_heads * c.head_dim
    mlp = (c.moe_top_k * (4 * c.mlp_hidden + 2 * c.d_model) + 2 * c.moe_experts + c.d_model
           if c.moe_experts else 4 * c.mlp_hidden)
    return (4 if frozen else 6) * c.d_model + 3 * q + 3 * kv + c.heads + mlp


def _vit_block(cfg: MolmoConfig) -> int:
    """Elements one ViT block saves per ViT token."""
    return 8 * cfg.vision.width + 3 * cfg.vision.mlp_hidden + cfg.vision.heads + 4


def activation_bytes(cfg: MolmoConfig, shapes: Shapes, *, checkpointing: bool,
                     image_path: bool = True, frozen: bool = False, dtype_bytes: int = FP32
                     ) -> int:
    """Bytes alive for the backward pass of one micro-batch at its peak (module docstring),
    the batch's own tensors included. ``image_path`` False: the ViT and connector save nothing
    (frozen, nothing before them trains)."""
    v, con, llm = cfg.vision, cfg.connector, cfg.llm
    tokens = shapes.batch * shapes.seq_len
    vit_tokens = shapes.batch * shapes.crops * (v.grid ** 2 + 1)
    pooled = shapes.batch * shapes.crops * (v.grid // con.pool_size) ** 2
    vit_blocks = max(i % v.layers for i in v.feature_layers) + 1 if image_path else 0
    inputs = FP32 * shapes.batch * shapes.crops * v.grid ** 2 * (v.patch_dim + 1) \
        + 5 * 8 * tokens
    image = (vit_tokens * 3 * v.width + pooled * (4 * v.feature_dim + 9 * con.pool_dim // 2
                                                  + 4 * con.projector_hidden)
             if image_path else 0)
    head = 5 * llm.embedding_size * tokens * FP32  # fp32 whatever the compute dtype
    llm_block, vit_block = _llm_block(cfg, frozen) * tokens, _vit_block(cfg) * vit_tokens
    fixed = inputs + dtype_bytes * (image + 3 * llm.d_model * tokens)
    if not checkpointing:
        return fixed + head + dtype_bytes * (llm.layers * llm_block + vit_blocks * vit_block)
    kept = llm.layers * llm.d_model * tokens + vit_blocks * v.width * vit_tokens
    recomputed = max(llm_block, vit_block if vit_blocks else 0) * dtype_bytes
    return fixed + dtype_bytes * kept + max(head, recomputed)


def largest_batch(peak_at: Callable[[int], int], memory: int) -> int:
    """The largest micro-batch whose peak fits ``memory`` (0: not even one example)."""
    if peak_at(1) > memory:
        return 0
    lo = 1
    while lo < MAX_BATCH and peak_at(2 * lo) <= memory:
        lo *= 2
    hi = min(2 * lo, MAX_BATCH + 1)  # peak_at(lo) fits, peak_at(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak_at(mid) <= memory else (lo, mid)
    return lo


def plan(cfg: TrainConfig, *, mode: str = "full", devices: int = 1, batch: int | None = None,
         checkpointing: bool | None = None, gpu: bool = True,
         gpu_memory: int | None = None, model: MolmoConfig | None = None) -> Plan:
    """Bytes per device for ``mode`` (full, fsdp over ``devices``, lora) at micro-batch
    ``batch`` (default the config's ``data.batch_size``), and the largest micro-batch that
    fits ``gpu_memory``. ``gpu`` False: CPU (fp32 activations whatever the precision)."""
    arch = model or model_config(cfg)
    if mode == "lora" and cfg.lora is None:
        cfg = dataclasses.replace(cfg, lora=LoraConfig())  # peft's usual rank-16 adapters
    counts = _counts(cfg, _meta_model(arch))
    ckpt = cfg.parallel.activation_checkpointing if checkpointing is None else checkpointing
    act_bytes = 2 if gpu and cfg.parallel.precision != "fp32" else FP32
    shards = devices if mode == "fsdp" else 1
    trainable = counts["lora" if mode == "lora" else "full"]
    params = (counts["total"] + (trainable if mode == "lora" else 0)) * FP32 // shards
    grads = trainable * FP32 // shards
    optimizer = 2 * grads
    temporary = counts[f"{'lora' if mode == 'lora' else 'full'}_group"] * FP32 // shards
    unsharded = (2 * counts["block"] + counts["outside_blocks"]) * act_bytes \
        if shards > 1 else 0
    image_path = _image_path(cfg, mode)

    def activations(b: int) -> int:
        shapes = Shapes(b, cfg.data.max_sequence_length, _crops(cfg))
        return activation_bytes(arch, shapes, checkpointing=ckpt, image_path=image_path,
                                frozen=mode == "lora", dtype_bytes=act_bytes)

    def peak_at(b: int) -> int:
        backward = params + optimizer + activations(b) + unsharded
        return max(backward, params + grads + optimizer + temporary)

    b = batch or cfg.data.batch_size
    fits = None if gpu_memory is None else largest_batch(peak_at, gpu_memory)
    name = f"fsdp/{devices}" if mode == "fsdp" else mode
    return Plan(name, devices if mode == "fsdp" else 1, params, grads, optimizer,
                activations(b), ckpt, peak_at(b), fits)


def plans(cfg: TrainConfig, *, devices: int = 8, gpu: bool = True,
          gpu_memory: int | None = None) -> list[Plan]:
    """Full fine-tuning on one device, FSDP over ``devices`` and LoRA, each without and with
    activation checkpointing."""
    if devices < 1:
        raise PixmoError(f"must be at least 1, got {devices}", field="--devices")
    arch = model_config(cfg)
    return [plan(cfg, mode=mode, devices=devices, checkpointing=ckpt, gpu=gpu,
                 gpu_memory=gpu_memory, model=arch)
            for mode in ("full", "fsdp", "lora") for ckpt in (False, True)]


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def render(cfg: TrainConfig, rows: list[Plan], *, as_json: bool = False) -> str:
    """``molmo plan``'s output: a table in GiB per device, or JSON in bytes."""
    shapes = {"micro_batch": cfg.data.batch_size, "seq_len": cfg.data.max_sequence_length,
              "crops": _crops(cfg)}
    if as_json:
        return json.dumps({**shapes, "plans": [r.to_dict() for r in rows]}, indent=2)
    head = ["mode", "act.ckpt", "params", "grads", "optimizer", "activations", "peak",
            "max micro-batch"]
    body = [[r.mode, "on" if r.checkpointing else "off", _gib(r.params), _gib(r.grads),
             _gib(r.optimizer), _gib(r.activations), _gib(r.peak),
             "-" if r.max_micro_batch is None else str(r.max_micro_batch)] for r in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True))
             for row in [head, *body]]
    note = (f"GiB per device; activations per micro-batch of {shapes['micro_batch']} x "
            f"{shapes['seq_len']} tokens, {shapes['crops']} crops per example")
    return "\n".join([note, *lines])
