"""Which sample each data-loader slot reads, in which order: pure arithmetic over shard counts.

A slot is one (rank, worker) pair. Per epoch the shards are permuted with the seed, their
samples laid end to end, and the slots take contiguous ranges of that sequence: each slot reads
only about 1/slots of the data, sequentially, and the split is at the sample level, so any
number of shards serves any number of slots. Inside its range a slot shuffles in blocks of
``block`` samples (a permutation per block, seeded), which makes the emitted order a pure
function of the position: resuming is a counter, never a replay of earlier data.

Nothing here holds a per-sample table: memory is O(shards) for the plan and O(block) for the
samples being read, whatever the dataset size. Shards are read only through
``pixmo.dataset.reader`` (``shard_urls``, ``committed_shards``, ``iter_shard``).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np

from pixmo.dataset.format import SHARDS_DIR, ShardSample
from pixmo.dataset.reader import committed_shards, iter_members, parse_sample, shard_urls
from pixmo.errors import PixmoError

log = logging.getLogger(__name__)

# Tags that keep the random streams of different purposes apart.
_SHARD_ORDER, _BLOCK_ORDER, _MIX = 1, 2, 3
MIX_CHUNK = 4096


@dataclass(frozen=True)
class Shard:
    """One committed shard: where it is, how many samples its commit marker counts."""

    url: str
    samples: int
    dataset: int  # index of its dataset in the config
    index: int  # position in its dataset's shard list (part of each sample's seed)


def resolve_shards(source: str | Sequence[str], dataset: int) -> list[Shard]:
    """Shards of a dataset directory, a brace pattern, or explicit tar paths / fsspec URLs.

    Sample counts come from the commit markers (``committed_shards``); a tar named explicitly
    must sit in a dataset directory's ``shards/`` folder next to its marker.
    """
    if isinstance(source, str) and not source.endswith(".tar") and "{" not in source:
        base = source.rstrip("/")
        return [Shard(f"{base}/{SHARDS_DIR}/{s.shard}", s.samples, dataset, i)
                for i, s in enumerate(committed_shards(source))]
    urls = shard_urls(source)
    markers: dict[str, dict[str, int]] = {}
    shards = []
    for i, url in enumerate(urls):
        folder, name = posixpath.split(url)
        root, sub = posixpath.split(folder)
        if sub != SHARDS_DIR:
            raise PixmoError(f"shard is not in a dataset's {SHARDS_DIR}/ folder, so its commit "
                             "marker (sample count) cannot be found", file=url)
        if root not in markers:
            markers[root] = {s.shard: s.samples for s in committed_shards(root)}
        if name not in markers[root]:
            raise PixmoError("shard has no commit marker (stats JSON): it is unfinished or "
                             "not a PixMo shard", file=url)
        shards.append(Shard(url, markers[root][name], dataset, i))
    return shards


class EpochOrder:
    """The shards of one epoch in seeded order, with the offset where each one starts."""

    def __init__(self, shards: Sequence[Shard], seed: int, tag: int, epoch: int) -> None:
        perm = np.random.default_rng([seed, _SHARD_ORDER, tag, epoch]).permutation(len(shards))
        self.shards = [shards[i] for i in perm]
        self.starts = np.concatenate([[0], np.cumsum([s.samples for s in self.shards])])
        self.epoch = epoch

    @property
    def total(self) -> int:
        return int(self.starts[-1])

    def locate(self, g: int) -> tuple[int, int]:
        """(position in the order, offset in that shard) of global sample index ``g``."""
        i = int(np.searchsorted(self.starts, g, side="right")) - 1
        return i, g - int(self.starts[i])


@dataclass(frozen=True)
class Item:
    """One position of a slot's stream: the raw sample, or why it cannot be read."""

    shard: Shard
    offset: int
    epoch: int
    padding: bool  # a repeat that only fills a batch (finite mode); trained with zero loss
    sample: ShardSample | None = None
    error: str | None = None
    key: str | None = None
    origin: bool = False  # the position where a read failure happened (counts once)


class ShardCursor:
    """Reads contiguous global indices of an epoch order, keeping one shard open between calls.

    A broken tar stops a shard: ``iter_members`` cannot go on after a corrupt member, so every
    later sample of that shard is reported lost, and the failure itself once (``origin``). A
    sample whose JSON does not parse is lost alone.
    """

    def __init__(self, order: EpochOrder) -> None:
        self.order = order
        self._pos: int | None = None  # shard position of the open iterator
        self._next = 0  # offset its next sample has
        self._it: Generator[tuple[str, dict[str, bytes]], None, None] | None = None
        self._failed: dict[int, tuple[int, str, str | None]] = {}

    def _fail(self, pos: int, offset: int, exc: Exception | str, key: str | None) -> None:
        shard = self.order.shards[pos]
        message = str(exc)
        lost = shard.samples - offset
        log.warning("skipping %d remaining samples of shard %s from offset %d (key %s): %s",
                    lost, shard.url, offset, key, message)
        self._failed[pos] = (offset, message, key)
        self._it, self._pos = None, None

    def _advance(self, pos: int) -> ShardSample | PixmoError | None:
        """The next sample of the open shard, the error of a broken sample, or None after
        recording the failure of the shard."""
        assert self._it is not None
        try:
            key, members = next(self._it)
        except StopIteration:
            self._fail(pos, self._next, f"shard ended after {self._next} samples, its "
                       f"commit marker counts {self.order.shards[pos].samples}", None)
            return None
        except (PixmoError, OSError, EOFError) as exc:
            self._fail(pos, self._next, exc, getattr(exc, "record", None))
            return None
        self._next += 1
        try:
            return parse_sample(self.order.shards[pos].url, key, members)
        except PixmoError as exc:
            return exc

    def _readable(self, pos: int, offset: int) -> bool:
        failed = self._failed.get(pos)
        return failed is None or offset < failed[0]

    def read(self, g: int, padding: bool) -> Item:
        pos, offset = self.order.locate(g)
        shard = self.order.shards[pos]
        epoch = self.order.epoch
        if self._readable(pos, offset):
            if self._pos != pos or self._next != offset:
                if self._it is not None:
                    self._it.close()
                self._it, self._pos, self._next = iter_members(shard.url), pos, 0
                while self._next < offset and self._advance(pos) is not None:
                    pass
            if self._pos == pos:
                sample = self._advance(pos)
                if isinstance(sample, PixmoError):
                    log.warning("skipping sample %s of shard %s: %s", sample.record, shard.url,
                                sample.reason)
                    # a padding repeat of a broken sample is not a second failure
                    return Item(shard, offset, epoch, padding, error=str(sample),
                                key=str(sample.record), origin=not padding)
                if sample is not None:
                    return Item(shard, offset, epoch, padding, sample, key=sample.key)
        failed_at, message, key = self._failed[pos]
        origin = offset == failed_at
        return Item(shard, offset, epoch, padding, error=message, key=key if origin else None,
                    origin=origin)


class BlockStream:
    """One slot's positions ``start + p`` (mod the epoch total), block-shuffled.

    ``length`` None: unbounded (finite mode reads past its ``real`` share only to fill whole
    batches; those positions are padding, repeats of the next slot's samples). ``position`` is
    how many items were already emitted.
    """

    def __init__(self, order: EpochOrder, start: int, length: int | None, real: int,
                 block: int, key: Sequence[int], position: int = 0) -> None:
        if order.total == 0:
            raise PixmoError("an epoch with no samples cannot be streamed")
        self.order, self.start, self.length, self.real = order, start, length, real
        self.block, self.key, self.position = block, tuple(key), position
        self._cursor = ShardCursor(order)
        self._cached: int | None = None
        self._items: list[Item | None] = []  # None once emitted: its bytes can go
        self._perm = np.zeros(0, np.int64)

    @property
    def exhausted(self) -> bool:
        return self.length is not None and self.position >= self.length

    def _load(self, b: int) -> None:
        lo = b * self.block
        n = self.block if self.length is None else min(self.block, self.length - lo)
        total = self.order.total
        self._items = []  # let the previous block go before reading the next
        self._items = [self._cursor.read((self.start + p) % total, padding=p >= self.real)
                       for p in range(lo, lo + n)]
        self._perm = np.random.default_rng([*self.key, _BLOCK_ORDER, b]).permutation(n)
        self._cached = b

    def next(self) -> Item:
        if self.exhausted:
            raise IndexError("stream exhausted")
        b, i = divmod(self.position, self.block)
        if self._cached != b:
            self._load(b)
        self.position += 1
        item, self._items[int(self._perm[i])] = self._items[int(self._perm[i])], None
        assert item is not None
        return item


def slot_range(total: int, slot: int, slots: int) -> tuple[int, int]:
    """(start, length) of the contiguous range slot ``slot`` of ``slots`` reads."""
    start = slot * total // slots
    return start, (slot + 1) * total // slots - start


def mixture_rates(sizes: Sequence[int], rates: Sequence[float | None]) -> np.ndarray:
    """Sampling probabilities: the given rates normalised, or proportional to sqrt(size)."""
    given = [r is not None for r in rates]
    if any(given) and not all(given):
        raise PixmoError("give a rate for every dataset or for none (then rates follow the "
                         "square root of their sizes)", field="datasets.rate")
    raw = np.asarray(rates if all(given) else np.sqrt(np.asarray(sizes, np.float64)),
                     np.float64)
    if np.any(raw < 0) or not raw.sum() > 0:
        raise PixmoError(f"mixture rates must be >= 0 with a positive sum, got {raw.tolist()}",
                         field="datasets.rate")
    return raw / raw.sum()


class MixtureDraws:
    """A slot's i.i.d. dataset draws by ``rates``, addressable by position ``k``."""

    def __init__(self, rates: np.ndarray, seed: int, slot: int) -> None:
        self.rates, self.seed, self.slot = rates, seed, slot
        self._chunk: int | None = None
        self._draws = np.zeros(0, np.int64)

    def __getitem__(self, k: int) -> int:
        chunk, i = divmod(k, MIX_CHUNK)
        if chunk != self._chunk:
            rng = np.random.default_rng([self.seed, _MIX, self.slot, chunk])
            self._draws = rng.choice(len(self.rates), size=MIX_CHUNK, p=self.rates)
            self._chunk = chunk
        return int(self._draws[i])
