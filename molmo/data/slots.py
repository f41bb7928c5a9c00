"""One slot's batches: a (rank, worker) pair walking its own slice of the data, resumable.

Each slot has a contiguous, block-shuffled slice of every epoch (``molmo/data/order.py``) in
finite mode, or draws the dataset of its next example from the mixture in resampled mode; it
turns samples into examples (``molmo/data/tasks.py``), runs the Molmo preprocessor and collates
whole batches inside its worker (a DataLoader process or a thread). A slot's position is a few
counters (its ``state``), so it restarts exactly where a saved state says, with no replay.

Failures are values: a sample that cannot be read, parsed or preprocessed is skipped, logged
with its shard and key, and counted; more than ``max_consecutive_failures`` in a row (in one
slot) stops training with an error. Sample members are only ever JSON-decoded or
image-decoded, never unpickled.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from molmo.data.config import DataConfig
from molmo.data.order import BlockStream, EpochOrder, Item, MixtureDraws, Shard, slot_range
from molmo.data.tasks import build_example, load_image
from molmo.preprocess.batching import collate
from molmo.preprocess.processor import MolmoProcessor
from pixmo.errors import PixmoError

log = logging.getLogger(__name__)

COUNTERS = ("examples", "padding", "empty", "failed_samples", "failures")


@dataclass(frozen=True)
class BatchInfo:
    """Where a batch came from: its slot, the examples' keys and datasets, which are padding,
    and the slot's state after it (what ``state_dict`` records)."""

    slot: int
    keys: tuple[str, ...]
    datasets: tuple[str, ...]
    padding: tuple[bool, ...]
    state: dict[str, Any]


@dataclass(frozen=True)
class SlotContext:
    """What every slot of a rank needs: inherited by the DataLoader workers."""

    config: DataConfig
    shards: tuple[tuple[Shard, ...], ...]  # per dataset
    rates: np.ndarray
    processor: MolmoProcessor
    rank: int
    world_size: int
    epoch: int  # finite mode
    slot_length: int  # finite mode: positions per slot, a multiple of batch_size

    @property
    def slots(self) -> int:
        return self.world_size * self.config.slots_per_rank

    @property
    def samples(self) -> int:
        return sum(s.samples for shards in self.shards for s in shards)


class Slot:
    """One slot's batches, from its saved state on."""

    def __init__(self, ctx: SlotContext, slot: int, state: dict[str, Any] | None) -> None:
        self.ctx, self.slot = ctx, slot
        cfg = ctx.config
        fresh = {"batches": 0, "consecutive": 0, "unusable": 0, **dict.fromkeys(COUNTERS, 0)}
        if cfg.mode == "finite":
            fresh["position"] = 0
        else:
            fresh.update(streams=[[0, 0] for _ in cfg.datasets], draws=0)
        self.state = copy.deepcopy(state) if state is not None else fresh
        if cfg.mode == "finite":
            order = EpochOrder([s for shards in ctx.shards for s in shards], cfg.seed, 0,
                               ctx.epoch)
            # A near-equal share of the epoch, padded with repeats (no loss) to whole batches;
            # past those, an overflow of repeats fills in for samples that failed.
            start, real = slot_range(order.total, slot, ctx.slots)
            length, key, position = ctx.slot_length, (cfg.seed, 0, ctx.epoch, slot), \
                self.state["position"]
            self._finite = (
                BlockStream(order, start, length, real, cfg.shuffle_block, key,
                            min(position, length)),
                BlockStream(order, start + length, None, 0, cfg.shuffle_block, (*key, 1),
                            max(position - length, 0)),
            )
        else:
            self._streams: list[BlockStream | None] = [None] * len(cfg.datasets)
            self._draws = MixtureDraws(ctx.rates, cfg.seed, slot)

    def _dataset_stream(self, d: int) -> BlockStream:
        """Dataset ``d``'s stream at the slot's position, moving to its next epoch when done."""
        epoch, position = self.state["streams"][d]
        stream = self._streams[d]
        while stream is None or stream.exhausted:
            if stream is not None:
                epoch, position = epoch + 1, 0
            cfg, slots = self.ctx.config, self.ctx.slots
            order = EpochOrder(self.ctx.shards[d], cfg.seed, d + 1, epoch)
            # The range a slot reads rotates with the epoch, so no slot is starved for good
            # when a dataset has fewer samples than there are slots.
            part = (self.slot + epoch) % slots
            start, length = slot_range(order.total, part, slots)
            stream = BlockStream(order, start, length, length, cfg.shuffle_block,
                                 (cfg.seed, d + 1, epoch, part), position)
        self._streams[d] = stream
        return stream

    def _next_item(self) -> Item:
        if self.ctx.config.mode == "finite":
            share, overflow = self._finite
            item = (overflow if share.exhausted else share).next()
            self.state["position"] = share.position + overflow.position
            return item
        d = self._draws[self.state["draws"]]
        self.state["draws"] += 1
        stream = self._dataset_stream(d)
        item = stream.next()
        self.state["streams"][d] = [stream.order.epoch, stream.position]
        return item

    def _failure(self, item: Item, reason: str) -> None:
        state, limit = self.state, self.ctx.config.max_consecutive_failures
        state["failures"] += 1
        state["consecutive"] += 1
        if state["consecutive"] > limit:
            raise PixmoError(f"{state['consecutive']} consecutive samples failed, more than "
                             f"max_consecutive_failures {limit}; the last: {reason}",
                             file=item.shard.url, record=item.key)

    def _arrays(self, item: Item) -> dict[str, np.ndarray] | None:
        """The processor's arrays for a readable item; None if it has nothing to train."""
        ctx, shard = self.ctx, item.shard
        assert item.sample is not None
        rng = np.random.default_rng([ctx.config.seed, shard.dataset, item.epoch, shard.index,
                                     item.offset])
        example = build_example(item.sample, ctx.config.datasets[shard.dataset].tasks,
                                ctx.processor.config.chat, rng)
        if not example.conversations:
            return None
        image = load_image(item.sample, ctx.config.max_image_pixels)
        arrays = ctx.processor(image, list(example.conversations))
        if item.padding:
            arrays["labels"][:] = -100
            arrays["loss_masks"][:] = 0.0
        return arrays

    def _next_example(self) -> tuple[Item, dict[str, np.ndarray]]:
        state = self.state
        while True:
            if state["unusable"] > self.ctx.samples:
                raise PixmoError(
                    f"no usable sample in {state['unusable']} positions in a row, more than the "
                    f"{self.ctx.samples} samples of the data: every sample failed, was lost with "
                    "a broken shard, or has no annotation for the enabled tasks (see "
                    "earlier warnings)")
            state["unusable"] += 1
            item = self._next_item()
            if item.error is not None:
                state["failed_samples"] += int(not item.padding)  # repeats are not new losses
                if item.origin:
                    self._failure(item, item.error)
                continue
            try:
                arrays = self._arrays(item)
            except PixmoError as exc:
                log.warning("skipping sample %s of shard %s: %s", item.key, item.shard.url, exc)
                state["failed_samples"] += 1
                self._failure(item, str(exc))
                continue
            if arrays is None:
                state["empty"] += 1
                continue
            state["consecutive"] = state["unusable"] = 0
            state["examples"] += 1
            state["padding"] += int(item.padding)
            return item, arrays

    def batches(self) -> Iterator[tuple[dict[str, Any], BatchInfo]]:
        ctx = self.ctx
        size = ctx.config.batch_size
        per_slot = ctx.slot_length // size if ctx.config.mode == "finite" else math.inf
        names = [d.name for d in ctx.config.datasets]
        while self.state["batches"] < per_slot:
            items, examples = zip(*(self._next_example() for _ in range(size)), strict=True)
            self.state["batches"] += 1
            info = BatchInfo(
                slot=self.slot,
                keys=tuple(it.key for it in items),
                datasets=tuple(names[it.shard.dataset] for it in items),
                padding=tuple(it.padding for it in items),
                state=copy.deepcopy(self.state),
            )
            yield collate(examples), info


class SlotDataset(IterableDataset):
    """Worker w serves the rank's slot (w + rotation) % workers: after a resume at batch j, the
    first worker to deliver must be the slot whose turn it is."""

    def __init__(self, ctx: SlotContext, states: Sequence[dict[str, Any] | None],
                 rotation: int) -> None:
        self.ctx, self.states, self.rotation = ctx, list(states), rotation

    def __iter__(self) -> Iterator[tuple[dict[str, Any], BatchInfo]]:
        info = get_worker_info()
        return self.worker(0 if info is None else info.id)

    def worker(self, w: int) -> Iterator[tuple[dict[str, Any], BatchInfo]]:
        ctx = self.ctx
        per_rank = ctx.config.slots_per_rank
        local = (w + self.rotation) % per_rank
        slot = Slot(ctx, ctx.rank * per_rank + local, self.states[local])
        yield from slot.batches()


def thread_worker(dataset: SlotDataset, pin_memory: bool,
                  w: int) -> Iterator[tuple[dict[str, Any], BatchInfo]]:
    """Worker thread ``w``'s batches, pinned in the worker (the DataLoader pins in a thread of
    the main process)."""
    for batch, info in dataset.worker(w):
        yield ({k: v.pin_memory() for k, v in batch.items()} if pin_memory else batch), info
