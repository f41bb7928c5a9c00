"""The training data loader: PixMo shards in, model-ready Molmo batches out, exactly resumable.

Each (rank, worker) pair is a *slot* with its own contiguous, block-shuffled slice of every
epoch (``molmo/data/order.py``); a slot turns samples into examples
(``molmo/data/tasks.py``), runs the Molmo preprocessor and collates whole batches inside its worker (a DataLoader process or a
thread, ``worker_type``). Batches are taken from the workers round-robin, so the batch sequence
of a rank is fixed by the seed, the world size and the worker count, and a slot's position is a
few counters: ``state_dict`` records them for the batches the training loop actually received,
and ``load_state_dict`` restarts every worker there, with no replay of earlier data.

Modes: ``finite`` walks each epoch once (all datasets together) and pads every slot to the same
number of full batches with repeats that carry no loss, so every rank yields the same number of
batches and each sample is trained once per epoch. ``resampled`` is an infinite stream: each
slot draws the dataset of its next example i.i.d. with the mixture rates (default proportional to
the square root of the dataset sizes, as Molmo did) and walks each dataset epoch after epoch,
reshuffled every time.

Failures are values: a sample that cannot be read, parsed or preprocessed is skipped, logged
with its shard and key, and counted (``stats()``); more than ``max_consecutive_failures`` in a
row (in one worker) stops training with an error. Sample members are only ever JSON-decoded
or image-decoded, never unpickled.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from molmo.data.order import (
    BlockStream,
    EpochOrder,
    Item,
    MixtureDraws,
    Shard,
    mixture_rates,
    resolve_shards,
    slot_range,
)
from molmo.data.tasks import DEFAULT_MAX_PIXELS, TaskConfig, build_example, load_image
from molmo.data.workers import round_robin
from molmo.preprocess.batching import collate
from molmo.preprocess.config import PIXEL_DTYPES, PreprocessConfig
from molmo.preprocess.processor import MolmoProcessor
from molmo.preprocess.tokenizer import TextTokenizer
from pixmo.config import from_mapping
from pixmo.errors import ConfigError, PixmoError

log = logging.getLogger(__name__)

MODES = ("finite", "resampled")
WORKER_TYPES = ("process", "thread")
STATE_VERSION = 1
COUNTERS = ("examples", "padding", "empty", "failed_samples", "failures")


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset of the mixture.

    ``source``: a dataset directory (committed shards), a brace pattern
    (``.../shards/pixmo-{000000..000009}.tar``) or tar paths / fsspec URLs.
    ``rate``: mixture weight (normalised over datasets); None for all datasets means
    proportional to sqrt(size), with ``size`` overriding the sample count for that rule (Molmo
    treated PixMo-Cap as 50,000 samples).
    """

    name: str
    source: str | tuple[str, ...]
    rate: float | None = None
    size: int | None = None
    tasks: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("must be non-empty", field="DatasetConfig.name")
        if self.rate is not None and not self.rate >= 0:
            raise ConfigError(f"must be >= 0, got {self.rate} (dataset {self.name!r})",
                              field="DatasetConfig.rate")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"must be >= 1, got {self.size} (dataset {self.name!r})",
                              field="DatasetConfig.size")


@dataclass(frozen=True)
class DataConfig:
    """Everything that decides the batch sequence; part of the training config.

    ``batch_size`` is per rank. ``shuffle_block``: samples shuffled together inside a slot's
    slice; a worker holds that many raw samples per dataset in memory (lower it for mixtures of
    many datasets with large images). ``max_sequence_length``
    truncates examples at the end (never inside the image block, which comes first);
    ``max_crops`` None keeps the preprocessor's. Batches pad to their longest example.
    ``pixel_dtype``: how crops travel from the workers. "uint8" (unnormalised pixels, a quarter
    of the bytes of float32) needs ``molmo.preprocess.processor.normalize_images`` on the consumer side,
    which the training loop runs on its device; "float32" yields model-ready crops.
    ``worker_type``: "process" runs the workers as DataLoader processes; "thread" as threads
    of this process (``molmo/data/workers.py``), which skips moving every batch between
    processes but shares this process's GIL with the training loop. Both yield the same
    batches, and a state saved with one resumes with the other.
    """

    datasets: tuple[DatasetConfig, ...]
    batch_size: int = 4
    seed: int = 0
    mode: str = "resampled"
    num_workers: int = 2
    shuffle_block: int = 128
    max_sequence_length: int = 2304
    max_crops: int | None = None
    max_consecutive_failures: int = 100
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    prefetch_factor: int = 2
    pin_memory: bool = False
    worker_timeout_s: float = 0.0  # a worker silent this long fails the run (0: wait forever)
    pixel_dtype: str = "uint8"
    worker_type: str = "process"

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ConfigError("must name at least one dataset", field="DataConfig.datasets")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ConfigError(f"names must be unique, got {names}", field="DataConfig.datasets")
        if self.mode not in MODES:
            raise ConfigError(f"must be one of {MODES}, got {self.mode!r}", field="DataConfig.mode")
        if self.mode == "finite" and any(d.rate is not None for d in self.datasets):
            raise ConfigError("'finite' reads every sample of every dataset once; dataset rates "
                              "need mode 'resampled'", field="DataConfig.mode")
        for name in ("batch_size", "shuffle_block", "max_sequence_length", "prefetch_factor",
                     "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}",
                                  field=f"DataConfig.{name}")
        for name in ("num_workers", "seed", "max_consecutive_failures"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}",
                                  field=f"DataConfig.{name}")
        if not self.worker_timeout_s >= 0:
            raise ConfigError(f"must be >= 0, got {self.worker_timeout_s}",
                              field="DataConfig.worker_timeout_s")
        if self.max_crops is not None and self.max_crops < 1:
            raise ConfigError(f"must be >= 1, got {self.max_crops}", field="DataConfig.max_crops")
        if self.worker_type not in WORKER_TYPES:
            raise ConfigError(f"must be one of {WORKER_TYPES}, got {self.worker_type!r}",
                              field="DataConfig.worker_type")
        if self.pixel_dtype not in PIXEL_DTYPES:
            raise ConfigError(f"must be one of {PIXEL_DTYPES}, got {self.pixel_dtype!r}",
                              field="DataConfig.pixel_dtype")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """From the ``data:`` section of a training YAML; unknown keys are refused."""
        return from_mapping(cls, data, "data")


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
class _Context:
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
    def slots_per_rank(self) -> int:
        return max(self.config.num_workers, 1)

    @property
    def slots(self) -> int:
        return self.world_size * self.slots_per_rank

    @property
    def samples(self) -> int:
        return sum(s.samples for shards in self.shards for s in shards)


class _Slot:
    """One slot's batches, from its saved state on."""

    def __init__(self, ctx: _Context, slot: int, state: dict[str, Any] | None) -> None:
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


class _SlotDataset(IterableDataset):
    """Worker w serves the rank's slot (w + rotation) % workers: after a resume at batch j, the
    first worker to deliver must be the slot whose turn it is."""

    def __init__(self, ctx: _Context, states: Sequence[dict[str, Any] | None],
                 rotation: int) -> None:
        self.ctx, self.states, self.rotation = ctx, list(states), rotation

    def __iter__(self) -> Iterator[tuple[dict[str, Any], BatchInfo]]:
        info = get_worker_info()
        return self.worker(0 if info is None else info.id)

    def worker(self, w: int) -> Iterator[tuple[dict[str, Any], BatchInfo]]:
        ctx = self.ctx
        local = (w + self.rotation) % ctx.slots_per_rank
        slot = _Slot(ctx, ctx.rank * ctx.slots_per_rank + local, self.states[local])
        yield from slot.batches()


def _unchanged(batch: Any) -> Any:
    return batch


def _thread_worker(dataset: _SlotDataset, pin_memory: bool,
                   w: int) -> Iterator[tuple[dict[str, Any], BatchInfo]]:
    """Worker thread ``w``'s batches, pinned in the worker (the DataLoader pins in a thread of
    the main process)."""
    for batch, info in dataset.worker(w):
        yield ({k: v.pin_memory() for k, v in batch.items()} if pin_memory else batch), info


class MolmoLoader:
    """Batches for one rank. ``rank``/``world_size`` default to torch.distributed's (or 0/1).

    Iterating yields dicts of tensors from ``molmo.preprocess.processor.collate`` (input_ids, labels,
    loss_masks, position_ids, subsegment_ids, images, image_masks, image_input_idx); with
    ``pixel_dtype`` "uint8" the images are uint8 with a ``crop_mask``, for
    ``molmo.preprocess.processor.normalize_images`` to make model-ready. In finite mode one iteration is
    one epoch and the next continues with the next epoch; in resampled mode iteration never
    ends. Breaking out of a loop and iterating again continues after the last batch received.
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
        return max(self.config.num_workers, 1)

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
        ctx = _Context(self.config, self.shards, self.rates, self.processor, self.rank,
                       self.world_size, self.epoch, self.slot_length)
        cfg, workers = self.config, self.config.num_workers
        dataset = _SlotDataset(ctx, self._states, self._batches % self.slots_per_rank)
        if workers and cfg.worker_type == "thread":
            pin = cfg.pin_memory and torch.accelerator.is_available()  # as the DataLoader
            loader = round_robin(partial(_thread_worker, dataset, pin), workers,
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
