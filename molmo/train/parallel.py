"""Process groups, devices and model wrapping: the only place that reads the environment.

Launched by ``torchrun`` (hence by Slurm, Kubernetes or Ray Train's TorchTrainer, which all start
torchrun-style workers), a process finds ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in its
environment and joins the group: NCCL on GPU, gloo on CPU. Launched plainly it is one process
with nothing wrapped.

Gradients are SUMMED across ranks, never averaged: the training loop already divides the
summed token loss by the global token weight, so a second division by the world size would make
two ranks differ from one process. DDP gets a summing communication hook; FSDP2 gets a gradient
divide factor of 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from molmo.model.molmo import Molmo
from molmo.train.config import ParallelConfig
from pixmo.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place: ``distributed`` is True under torchrun (even with one rank)."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(cfg: ParallelConfig) -> World:
    """Read torchrun's variables, pick the device and join the process group."""
    env = os.environ
    distributed = "RANK" in env and "WORLD_SIZE" in env
    rank = int(env.get("RANK", 0))
    local_rank = int(env.get("LOCAL_RANK", 0))
    world_size = int(env.get("WORLD_SIZE", 1))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("is cuda, but torch sees no CUDA device", field="parallel.device")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if distributed and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, device_id=device if use_cuda else None)
        log.info("rank %d of %d joined the %s process group", rank, world_size, backend)
    return World(rank, local_rank, world_size, device, distributed)


def close(wait: bool = True) -> None:
    """Tear the process group down, by default once every rank has got here: rank 0
    hosts the store, and a rank still tearing down when rank 0 has exited can abort.
    After an error, ``wait=False``: the other ranks may never arrive."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def compute_dtype(cfg: ParallelConfig, device: torch.device) -> torch.dtype:
    """bf16 compute on GPU (auto), fp32 on CPU; parameters stay fp32 either way."""
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def _blocks(model: Molmo) -> list[nn.ModuleList]:
    return [model.vision.blocks, model.llm.blocks]


def checkpoint_blocks(model: Molmo) -> None:
    """Recompute every ViT and LLM block in the backward pass instead of storing activations
    (the official ``whole_layer``). The wrapper keeps state-dict names unchanged."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for blocks in _blocks(model):
        for i, block in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def _sum_allreduce_hook(group, bucket):  # type: ignore[no-untyped-def]
    # Unannotated on purpose: DDP rejects a hook whose annotations are strings (this module
    # uses postponed annotations). group: ProcessGroup | None, bucket: GradBucket.
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def wrap(model: Molmo, cfg: ParallelConfig, world: World) -> nn.Module:
    """Activation checkpointing, then DDP or FSDP2 (per block, then the root) under torchrun."""
    if cfg.activation_checkpointing:
        checkpoint_blocks(model)
    if not world.distributed:
        return model
    if cfg.strategy == "ddp":
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[world.device.index] if world.device.type == "cuda" else None)
        ddp.register_comm_hook(None, _sum_allreduce_hook)
        return ddp
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    dtype = compute_dtype(cfg, world.device)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for blocks in _blocks(model):
        for block in blocks:
            fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    return model


def unwrap(model: nn.Module) -> Molmo:
    """The Molmo inside (DDP holds it as ``module``; FSDP2 shards it in place)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    assert isinstance(inner, Molmo)
    return inner


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient reduction of all but the last micro-batch of a step."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    yield


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (a no-op in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
