"""The training data loader: PixMo shards in, model-ready Molmo batches out, exactly resumable.

Every rank runs one slot per worker (``molmo/data/slots.py``) and takes their batches
round-robin, so the batch sequence of a rank is fixed by the seed, the world size and the worker
count; ``state_dict`` records the slots' counters for the batches the training loop actually
received, and ``load_state_dict`` restarts every worker there, with no replay of earlier data.

Modes: ``finite`` walks each epoch once (all datasets together) and pads every slot to the same
number of full batches with repeats that carry no loss, so every rank yields the same number of
batches and each sample is trained once per epoch. ``resampled`` is an infinite stream: each
slot draws the dataset of its next example i.i.d. with the mixture rates (default proportional
to the square root of the dataset sizes, as Molmo did) and walks each dataset epoch after
epoch, reshuffled every time. Skipped samples and failures are counted (``stats()``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Generator, Iterator
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader

from molmo.data.config import DataConfig
from molmo.data.order import mixture_rates, resolve_shards
from molmo.data.slots import COUNTERS, BatchInfo, SlotContext, SlotDataset, thread_worker
from molmo.data.workers import round_robin
from molmo.preprocess.config import PreprocessConfig
from molmo.preprocess.processor import MolmoProcessor
from molmo.preprocess.tokenizer import TextTokenizer
from pixmo.errors import PixmoError

log = logging.getLogger(__name__)

STATE_VERSION = 1


def _unchanged(batch: Any) -> Any:
    return batch


class MolmoLoader:
    """Batches for one rank. ``rank``/``world_size`` default to torch.distributed's (or 0/1).

    Iterating yields dicts of tensors from ``molmo.preprocess.batching.collate`` (input_ids,
    labels, loss_masks, position_ids, subsegment_ids, images, image_masks, image_input_idx);
    with ``pixel_dtype`` "uint8" the images are uint8 with a ``crop_mask``, for
    ``molmo.preprocess.batching.normalize_images`` to make model-ready. In finite mode one
    iteration is one epoch and the next continues with the next epoch; in resampled mode
    iteration never ends. Breaking out of a loop and iterating again continues after the last
    batch received.
    """

    def __init__(self, config: DataConfig, tokenizer: TextTokenizer,
                 preprocess: PreprocessConfig | None = None, *, rank: int | None = None,
                 world_size: int | None = None) -> None:
        if rank is None or world_size is None:
            rank, world_size = _distributed_rank()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size {world_size})")
        self.config, self.rank, self.world_size = config, rank, world_size
        preprocess = preprocess or PreprocessConfig()
        preprocess = dataclasses.replace(
            preprocess, max_sequence_length=config.max_sequence_length,
            max_crops=config.max_crops or preprocess.max_crops)
        self.processor = MolmoProcessor(tokenizer, preprocess, pixel_dtype=config.pixel_dtype)
        self.shards = tuple(tuple(resolve_shards(d.source, i))
                            for i, d in enumerate(config.datasets))
        self.sizes = [sum(s.samples for s in shards) for shards in self.shards]
        for d, size in zip(config.datasets, self.sizes, strict=True):
            if size == 0:
                raise PixmoError(f"dataset {d.name!r} has no committed samples",
                                 file=str(d.source))
        self.rates = mixture_rates([d.size or n for d, n in zip(config.datasets, self.sizes,
                                                                 strict=True)],
                                   [d.rate for d in config.datasets])
        self.epoch = 0
        self._batches = 0
        self._states: list[dict[str, Any] | None] = [None] * self.slots_per_rank
        self._done = dict.fromkeys(COUNTERS, 0)  # counts of finished epochs

    @property
    def slots_per_rank(self) -> int:
        return self.config.slots_per_rank

    @property
    def slot_length(self) -> int:
        """Finite mode: positions per slot and epoch, the epoch padded to whole batches."""
        slots = self.world_size * self.slots_per_rank
        size = self.config.batch_size
        return math.ceil(sum(self.sizes) / (slots * size)) * size

    @property
    def batches_per_epoch(self) -> int | None:
        """Batches each rank yields per epoch (finite mode), None in resampled mode."""
        if self.config.mode != "finite":
            return None
        return self.slots_per_rank * self.slot_length // self.config.batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch, _ in self.iter_with_info():
            yield batch

    def iter_with_info(self) -> Iterator[tuple[dict[str, Any], BatchInfo]]:
        """Like iterating, with each batch's :class:`BatchInfo`."""
        finite = self.config.mode == "finite"
        if finite and self._batches >= self.batches_per_epoch:
            self._next_epoch()
        ctx = SlotContext(self.config, self.shards, self.rates, self.processor, self.rank,
                       self.world_size, self.epoch, self.slot_length)
        cfg, workers = self.config, self.config.num_workers
        dataset = SlotDataset(ctx, self._states, self._batches % self.slots_per_rank)
        if workers and cfg.worker_type == "thread":
            pin = cfg.pin_memory and torch.accelerator.is_available()  # as the DataLoader
            loader = round_robin(partial(thread_worker, dataset, pin), workers,
                                 cfg.prefetch_factor, cfg.worker_timeout_s)
        else:
            loader = DataLoader(
                dataset, batch_size=None, num_workers=workers, collate_fn=_unchanged,
                prefetch_factor=cfg.prefetch_factor if workers else None,
                pin_memory=cfg.pin_memory, timeout=cfg.worker_timeout_s if workers else 0,
            )
        try:
            for batch, info in loader:
                self._states[info.slot - self.rank * self.slots_per_rank] = info.state
                self._batches += 1
                yield batch, info
        finally:
            if isinstance(loader, Generator):  # thread workers stop now, not when collected
                loader.close()
        if finite:
            self._next_epoch()

    def _next_epoch(self) -> None:
        self._done = self.stats()
        log.info("rank %d finished epoch %d: %s", self.rank, self.epoch, self._done)
        self.epoch += 1
        self._batches = 0
        self._states = [None] * self.slots_per_rank

    def stats(self) -> dict[str, int]:
        """This rank's counts so far: examples, padding repeats, samples without annotations
        (empty), samples skipped, and failure events (a broken shard is one event)."""
        return {name: self._done[name] + sum(s[name] for s in self._states if s is not None)
                for name in COUNTERS}

    def _identity(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "mode": cfg.mode, "world_size": self.world_size, "rank": self.rank,
            "num_workers": cfg.num_workers, "batch_size": cfg.batch_size, "seed": cfg.seed,
            "shuffle_block": cfg.shuffle_block,
            "datasets": [[d.name, len(s), n] for d, s, n in zip(cfg.datasets, self.shards,
                                                                self.sizes, strict=True)],
        }

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch this rank received (plain ints, lists and strings)."""
        return {"version": STATE_VERSION, **self._identity(), "epoch": self.epoch,
                "batches": self._batches, "slots": copy.deepcopy(self._states),
                "done": dict(self._done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly after the batch the state was saved at. Refuses a state from a
        different world size, worker count, rank, batch size, seed or dataset list."""
        if state.get("version") != STATE_VERSION:
            raise PixmoError(f"loader state version {state.get('version')!r} is not "
                             f"{STATE_VERSION}", field="data_loader")
        ours = self._identity()
        if (state["world_size"], state["num_workers"]) != (ours["world_size"],
                                                          ours["num_workers"]):
            raise PixmoError(
                f"loader state was saved with world_size={state['world_size']} and "
                f"num_workers={state['num_workers']}, this run has world_size="
                f"{self.world_size} and num_workers={self.config.num_workers}: exact "
                "resumption needs both unchanged, because they decide which samples each "
                "rank and worker reads", field="data_loader")
        for key, value in ours.items():
            if state[key] != value:
                raise PixmoError(f"loader state has {key}={state[key]!r}, this run has "
                                 f"{value!r}; exact resumption needs it unchanged",
                                 field="data_loader")
        if len(state["slots"]) != self.slots_per_rank:
            raise PixmoError(f"loader state has {len(state['slots'])} slots, expected "
                             f"{self.slots_per_rank}", field="data_loader")
        self.epoch = state["epoch"]
        self._batches = state["batches"]
        self._states = copy.deepcopy(state["slots"])
        self._done = dict(state["done"])


def _distributed_rank() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
