"""Training metrics: losses over the global batch, throughput, MFU, and where they are written.

Loss aggregation across micro-batches and ranks, throughput, an MFU estimate, and the writers (JSONL
file, TensorBoard, console progress bar). Only rank 0 writes.

Losses are weighted token means over the GLOBAL batch: every rank adds its sums, one all-reduce
per step combines them, and the divisor is the global loss weight (``loss_masks``), exactly the
normalisation the gradients use.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from molmo.model.molmo import Molmo
from molmo.train.config import MetricsConfig
from molmo.train.parallel import all_reduce_sum
from pixmo.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

# Dense bf16 peak of known accelerators, FLOP/s (no sparsity).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "B200": 2250e12,
              "L40S": 362e12, "A10G": 125e12}


class StepTotals:
    """Per-rank sums of one step (all micro-batches), reduced across ranks in one call.

    Layout: CE sum, z-loss sum, loss weight, tokens, samples, then (CE sum, weight) per dataset.
    The reported ``z_loss`` is the weighted mean of logsumexp squared, before its scale. Losses
    are per dataset of the mixture (``BatchInfo.datasets``): the loader gives no per-token task.
    """

    def __init__(self, datasets: Sequence[str]) -> None:
        self.datasets = list(datasets)
        self.values = torch.zeros(5 + 2 * len(self.datasets), dtype=torch.float64)

    def add(self, ce_rows: torch.Tensor, weight_rows: torch.Tensor, z_sum: float,
            tokens: int, row_datasets: Sequence[str], padding: Sequence[bool]) -> None:
        """``ce_rows``/``weight_rows``: per-example weighted CE sums and loss weights."""
        v = self.values
        v[0] += float(ce_rows.sum())
        v[1] += z_sum
        v[2] += float(weight_rows.sum())
        v[3] += tokens
        v[4] += sum(not p for p in padding)
        for ce, w, name in zip(ce_rows.tolist(), weight_rows.tolist(), row_datasets,
                               strict=True):
            d = 5 + 2 * self.datasets.index(name)
            v[d] += ce
            v[d + 1] += w

    def reduce(self, device: torch.device) -> dict[str, float]:
        """Global loss, z-loss, per-dataset loss, tokens and samples (collective call)."""
        v = all_reduce_sum(self.values.to(device)).cpu()
        weight = max(float(v[2]), 1e-12)
        out = {"loss": float(v[0]) / weight, "z_loss": float(v[1]) / weight,
               "tokens": float(v[3]), "samples": float(v[4])}
        for i, name in enumerate(self.datasets):
            ce, w = float(v[5 + 2 * i]), float(v[6 + 2 * i])
            if w > 0:
                out[f"loss/{name}"] = ce / w
        return out


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class FlopModel:
    """Training FLOPs (forward + backward = 6 per parameter and token, plus attention scores)
    of the parts that run: LLM blocks and head (MoE counted at top-k), ViT blocks up to the
    deepest feature layer, connector."""

    llm_params: float  # per token, active, without the embedding lookup
    llm_attention: float  # layers x heads x head_dim: x 12 x sequence length per token
    vit_params: float  # per patch position
    vit_attention: float
    vit_positions: int  # patches + CLS per crop
    connector_params: float  # per pooled token
    pooled_per_crop: int

    @classmethod
    def of(cls, model: Molmo) -> FlopModel:
        cfg = model.cfg
        llm = sum(_numel(b) for b in model.llm.blocks) + _numel(model.llm.lm_head)
        if cfg.llm.moe_experts:
            experts = sum(_numel(b.mlp.experts) for b in model.llm.blocks)
            llm -= experts * (1 - cfg.llm.moe_top_k / cfg.llm.moe_experts)
        run = max(model.vision.feature_blocks) + 1
        vit = _numel(model.vision.patch_embed) + sum(_numel(b) for b in
                                                       model.vision.blocks[:run])
        return cls(float(llm), float(cfg.llm.layers * cfg.llm.heads * cfg.llm.head_dim),
                   float(vit), float(run * cfg.vision.width), cfg.vision.grid ** 2 + 1,
                   float(_numel(model.connector)),
                   (cfg.vision.grid // cfg.connector.pool_size) ** 2)

    def step_flops(self, tokens: float, seq_len: float, crops: float) -> float:
        """FLOPs of a step of ``tokens`` LLM tokens (rows ``seq_len`` long) and ``crops``."""
        llm = tokens * (6 * self.llm_params + 12 * self.llm_attention * seq_len)
        patches = crops * self.vit_positions
        vit = patches * (6 * self.vit_params + 12 * self.vit_attention * self.vit_positions)
        return llm + vit + 6 * self.connector_params * crops * self.pooled_per_crop


def peak_flops(cfg: MetricsConfig, device: torch.device) -> float | None:
    """Per-device peak for MFU: configured, or looked up by GPU name; None on CPU."""
    if cfg.peak_tflops is not None:
        return cfg.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    found = [v for k, v in PEAK_FLOPS.items() if k in name]
    if not found:
        log.warning("unknown GPU %r: set metrics.peak_tflops to get MFU", name)
        return None
    return found[0]


class MetricsWriter:
    """Rank 0's outputs: ``metrics.jsonl`` (one object per logged step), TensorBoard and a
    progress bar. On resume, records after the restored step (from the interrupted run) are
    dropped so the file reads as one run."""

    def __init__(self, run_dir: Path, cfg: MetricsConfig, total_steps: int,
                 resume_step: int | None) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        kept = []
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line and json.loads(line)["step"] <= resume_step]
        atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode())
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self._bar = None
        if cfg.progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=resume_step or 0, unit="step",
                             dynamic_ncols=True)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record["step"]
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(loss=f"{record['loss']:.4f}",
                                  tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
            self._bar.refresh()
        else:
            log.info("step %d loss %.4f tokens/s %.0f", step, record["loss"],
                     record["tokens_per_s"])

    def write_eval(self, step: int, results: dict[str, Any]) -> None:
        scalars = {f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))}
        log.info("eval at step %d: %s", step, scalars)
        self._file.write(json.dumps({"step": step, **scalars}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
