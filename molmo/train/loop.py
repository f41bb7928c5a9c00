"""Training Molmo on PixMo shards: one process on CPU, one GPU, or many under ``torchrun``.

``train()`` reads top to bottom: build from the config, restore, then per step take the
micro-batches, run the step, maybe log, maybe save, maybe evaluate; close. The components live
in their own modules: ``parallel`` (process group, DDP/FSDP2), ``optim`` (groups, clipping),
``schedule`` (LR), ``metrics`` (aggregation, writers), ``train_checkpoint`` (save/restore),
``evaluate``.

The loss of a step is the summed (weighted) token cross-entropy of all micro-batches of all
ranks divided by the GLOBAL loss weight, which one all-reduce computes before the forward
passes; gradients are summed across ranks, so DDP and FSDP runs equal one process with the same
global batch.

    torchrun --nproc_per_node 2 -m molmo train CONFIG.yaml [--resume]
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from molmo.data.loader import MolmoLoader
from molmo.data.slots import BatchInfo
from molmo.model.molmo import Molmo, token_loss
from molmo.model.parts import from_parts
from molmo.model.serving import save_tokenizer_files, write_serving
from molmo.model.weights import from_pretrained, save_pretrained
from molmo.preprocess.batching import normalize_images
from molmo.preprocess.tokenizer import MolmoTokenizer
from molmo.train import lora, parallel
from molmo.train.checkpoint import Checkpointer, check_base
from molmo.train.config import ModelSection, TrainConfig
from molmo.train.metrics import FlopModel, MetricsWriter, StepTotals, peak_flops
from molmo.train.optim import build_optimizer, clip_per_group, freeze, set_lrs
from pixmo.atomic import atomic_directory
from pixmo.config import to_plain
from pixmo.errors import PixmoError

log = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "images", "image_masks", "image_input_idx")


@dataclass
class Run:
    """Everything ``train()`` works with, built from the config."""

    cfg: TrainConfig
    world: parallel.World
    tokenizer: MolmoTokenizer
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: MolmoLoader
    checkpointer: Checkpointer
    flops: FlopModel
    accumulation: int
    compute_dtype: torch.dtype


def build(cfg: TrainConfig, world: parallel.World) -> Run:
    """Tokenizer, model (adapters, frozen parts, device, wrapping), optimizer, loader,
    checkpointer."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    tokenizer = MolmoTokenizer.from_dir(cfg.model.tokenizer_dir,
                                        vocab_size=model.cfg.llm.vocab_size)
    flops = FlopModel.of(model)
    base = _base(cfg, model)
    if cfg.lora is not None:
        lora.apply(model, cfg.lora)
    freeze(model, cfg.optim)
    trainable, total = lora.parameter_counts(model)
    if world.is_main:
        log.info("trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}",
                 100 * trainable / total)
    wrapped = parallel.wrap(model.to(world.device), cfg.parallel, world)
    loader = MolmoLoader(cfg.data, tokenizer, cfg.preprocess, rank=world.rank,
                         world_size=world.world_size)
    return Run(cfg, world, tokenizer, wrapped, build_optimizer(parallel.unwrap(wrapped),
                                                               cfg.optim),
               loader, Checkpointer(Path(cfg.run_dir), cfg.checkpoint, world, base), flops,
               cfg.accumulation(world.world_size),
               parallel.compute_dtype(cfg.parallel, world.device))


def build_model(section: ModelSection) -> Molmo:
    """The starting model in fp32: a checkpoint, pretrained parts (fresh connector from the
    torch RNG), or a preset's random init."""
    if section.checkpoint is not None:
        return from_pretrained(section.checkpoint, dtype=torch.float32)
    if section.llm is not None and section.vision is not None:
        flat = {f"{part}_{name}": value for part, fields in section.overrides.items()
                for name, value in fields.items()}
        return from_parts(section.llm, section.vision, dtype=torch.float32, **flat)
    return Molmo(section.molmo_config())


def _base(cfg: TrainConfig, model: Molmo) -> dict[str, Any] | None:
    """A LoRA run's base identity and settings, as its checkpoints record them."""
    if cfg.lora is None:
        return None
    return {**lora.base_identity(cfg.model, model, cfg.seed), "lora": to_plain(cfg.lora)}


def train(cfg: TrainConfig, *, resume: bool = False) -> None:
    """Run the configured number of steps (continuing from the newest checkpoint with
    ``resume``), saving, evaluating and finally exporting the model."""
    from molmo.eval.heldout import evaluate

    world = parallel.init(cfg.parallel)
    try:
        run = build(cfg, world)
        if run.checkpointer.committed() and not resume:
            raise PixmoError("the run directory already has checkpoints: pass --resume to "
                             "continue it, or choose a new run_dir", file=cfg.run_dir)
        restored = run.checkpointer.restore(run.model, run.optimizer, run.loader) \
            if resume else None
        start = restored.step if restored else 0
        writer = MetricsWriter(Path(cfg.run_dir), cfg.metrics, cfg.steps,
                               start if restored else None) if world.is_main else None
        batches = _micro_batches(run.loader)
        for step in range(start + 1, cfg.steps + 1):
            micro = [next(batches) for _ in range(run.accumulation)]
            record = train_step(run, micro, step)
            if writer is not None and (step % cfg.metrics.log_interval == 0
                                       or step == cfg.steps):
                writer.write(record)
            if (step == cfg.steps and cfg.checkpoint.final) or (
                    cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0):
                run.checkpointer.save(step, run.model, run.optimizer, run.loader,
                                      cfg.to_dict())
            if cfg.eval.interval and (step % cfg.eval.interval == 0 or step == cfg.steps):
                out = Path(cfg.run_dir) / "eval" / f"step_{step}" if world.is_main else None
                results = evaluate(parallel.unwrap(run.model), run.tokenizer,
                                   run.loader.processor.config, cfg.eval, out_dir=out)
                if writer is not None:
                    writer.write_eval(step, results)
        if cfg.checkpoint.export:
            export(run, Path(cfg.run_dir) / "model")
        if writer is not None:
            writer.close()
    except BaseException:
        parallel.close(wait=False)
        raise
    parallel.close()


def _micro_batches(loader: MolmoLoader) -> Iterator[tuple[dict[str, torch.Tensor], BatchInfo]]:
    """Batches forever (finite mode: epoch after epoch)."""
    while True:
        yield from loader.iter_with_info()


def _autocast(run: Run) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where FSDP2 does not already cast the parameters (single process, DDP)."""
    from torch.distributed.fsdp import FSDPModule

    if run.compute_dtype == torch.float32 or isinstance(run.model, FSDPModule):
        return contextlib.nullcontext()
    return torch.autocast(run.world.device.type, dtype=run.compute_dtype)


def train_step(run: Run, micro: Sequence[tuple[dict[str, torch.Tensor], BatchInfo]],
               step: int) -> dict[str, Any]:
    """One optimizer step over this rank's micro-batches; returns the step's global metrics."""
    begin = time.perf_counter()
    cfg, device = run.cfg, run.world.device
    local = sum(float(b["loss_masks"].double().sum()) for b, _ in micro)
    divisor = parallel.all_reduce_sum(torch.tensor([local], dtype=torch.float64,
                                                   device=device)).item()
    divisor = divisor if divisor > 0 else 1.0  # a step of padding only: zero loss
    totals = StepTotals([d.name for d in cfg.data.datasets])
    tokens = crops = 0
    for i, (batch, info) in enumerate(micro):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if cfg.data.pixel_dtype == "uint8":  # crops travel as uint8, normalised on the device
            batch = normalize_images(batch, run.loader.processor.config)
        with parallel.grad_sync(run.model, i == len(micro) - 1), _autocast(run):
            logits = run.model(*(batch[k] for k in MODEL_INPUTS),
                               position_ids=batch["position_ids"],
                               subsegment_ids=batch["subsegment_ids"])  # [B, L, V]
            weights = batch["loss_masks"]
            ce_rows = torch.stack([token_loss(logits[r:r + 1], batch["labels"][r:r + 1],
                                              weights[r:r + 1])[0]
                                   for r in range(logits.shape[0])])  # [B]
            z_sum = (logits.float().logsumexp(-1).pow(2) * weights).sum()
            loss = (ce_rows.sum() + cfg.optim.z_loss * z_sum) / divisor
            loss.backward()
        totals.add(ce_rows.detach().cpu(), weights.sum(-1).cpu(), float(z_sum.detach()),
                   int((batch["input_ids"] != -1).sum()), info.datasets, info.padding)
        tokens += int((batch["input_ids"] != -1).sum())
        crops += int((~(batch["images"] == -1).all(-1).all(-1)).sum())
    norms = clip_per_group(run.optimizer, cfg.optim)
    lrs = set_lrs(run.optimizer, cfg.optim, step, cfg.steps)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    record = {"step": step, **totals.reduce(device)}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - begin
    record.update({f"lr/{k}": v for k, v in lrs.items()})
    record.update({f"grad_norm/{k}": v for k, v in norms.items()})
    record.update(tokens_per_s=record["tokens"] / elapsed,
                  samples_per_s=record["samples"] / elapsed, step_time_s=elapsed)
    if device.type == "cuda":
        record["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    peak = peak_flops(cfg.metrics, device)
    if peak is not None:  # this rank's micro-batches stand for every rank's
        seq_len = float(micro[0][0]["input_ids"].shape[1])
        flops = run.flops.step_flops(tokens, seq_len, crops)
        record["mfu"] = flops / (elapsed * peak)
    return record


def export(run: Run, path: Path) -> None:
    """Write the trained model (``save_pretrained``, our layout) with its tokenizer, for
    ``molmo predict`` and ``molmo eval``, LoRA adapters merged into the base. A collective
    call: every rank gathers the weights."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(run.model, options=StateDictOptions(full_state_dict=True,
                                                                     cpu_offload=True))
    if run.world.is_main:
        inner = parallel.unwrap(run.model)
        if run.cfg.lora is not None:
            plain = lora.merged(inner, run.cfg.lora, state)
        else:
            with torch.device("meta"):
                plain = Molmo(inner.cfg)
            plain.load_state_dict(state, assign=True)
        _write_model(plain, run.tokenizer, path, overwrite=True)
    parallel.barrier()


def _write_model(model: Molmo, tokenizer: MolmoTokenizer, path: Path, *,
                 overwrite: bool) -> None:
    with atomic_directory(path, overwrite=overwrite) as staged:
        save_pretrained(model, staged, overwrite=True)
        save_tokenizer_files(tokenizer, staged)
    log.info("exported the model to %s", path)


def export_checkpoint(checkpoint: str | Path, dst: str | Path, *, overwrite: bool = False,
                      layout: str = "ours") -> Path:
    """``molmo export``: a training checkpoint (``run_dir/checkpoints/step_N``, saved by any
    number of ranks) as the run's own export writes it: our layout with the tokenizer, LoRA
    adapters merged into the base, which must be the one they were trained on. ``layout=
    "official"`` writes the hub layout for serving instead (``molmo.model.serving``)."""
    import torch.distributed.checkpoint as dcp

    path = Path(checkpoint)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise PixmoError("is not a training checkpoint (no readable meta.json)",
                         file=str(path)) from exc
    cfg = TrainConfig.from_dict(meta["config"])
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    check_base(meta.get("base"), _base(cfg, model), path)
    if cfg.lora is not None:
        lora.apply(model, cfg.lora)
    saved = {k: v for k, v in model.state_dict().items() if cfg.lora is None or ".lora_" in k}
    dcp.load({"model": saved}, checkpoint_id=str(path / "dcp"))  # into the model's tensors
    if cfg.lora is not None:
        model = lora.merged(model, cfg.lora, model.state_dict())
    tokenizer = MolmoTokenizer.from_dir(cfg.model.tokenizer_dir,
                                        vocab_size=model.cfg.llm.vocab_size)
    if layout == "official":
        return write_serving(model, tokenizer, cfg.preprocess, dst, overwrite=overwrite)
    _write_model(model, tokenizer, Path(dst), overwrite=overwrite)
    return Path(dst)


def main_train(config_path: str, *, resume: bool = False, print_config: bool = False) -> int:
    """``molmo train``: print the resolved config, or train. User errors raise PixmoError."""
    cfg = TrainConfig.from_yaml(config_path)
    if print_config:
        print(cfg.to_yaml(), end="")
        return 0
    train(cfg, resume=resume)
    return 0

