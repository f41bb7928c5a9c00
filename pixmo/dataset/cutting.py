"""Cutting samples into shards: the one size estimate and the one place a shard ends.

Shards are runs of samples in key order. A shard ends before the sample that
would pass ``max_samples`` or ``max_bytes``, counting each sample's bytes in
the tar (``tar_bytes``: a header block and the data padded to blocks, per
member). ``ShardCutter`` applies that rule to a stream; ``ShardPlan`` is what
it makes of every sample's size at once, for engines that hand the plan to
their workers. The single-process writer, the build and the import all cut
with it, so the same samples give the same shards whichever wrote them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the writer cuts with this module
    from pixmo.dataset.writer import ShardConfig

BLOCK = 512  # tar's block size


def tar_bytes(member_sizes: Iterable[int]) -> int:
    """Bytes a sample with members of these sizes adds to a tar: a header block and
    the data padded to whole blocks, per member."""
    return sum(BLOCK + -(-size // BLOCK) * BLOCK for size in member_sizes)


def partitions(samples: int, partition_samples: int) -> int:
    """How many key ranges a build of ``samples`` samples is cut in."""
    return max(1, -(-samples // partition_samples))


def partition_of(key: str, parts: int) -> int:
    """The key range (0 to ``parts`` - 1) of a sample key: keys are hex digests,
    split evenly by their first 32 bits, so ranges follow key order."""
    return 0 if parts == 1 else int(key[:8].ljust(8, "0"), 16) * parts >> 32


@dataclass
class ShardCutter:
    """Cuts a stream of samples, in sorted key order, into shards: before a
    sample that would pass ``max_samples`` or ``max_bytes``, with shards
    numbered from ``start``. Engines that cannot sort everything in memory
    feed it in key order and hold one shard at a time; with ``parts`` key ranges
    (``partitions``), a shard also ends where the range changes."""

    max_samples: int
    max_bytes: int | None = None
    start: int = 0
    parts: int = 1
    index: int = field(init=False)  # the shard being filled
    _count: int = field(default=0, init=False, repr=False)
    _size: int = field(default=0, init=False, repr=False)
    _part: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = self.start

    def shard_of(self, size: int, key: str = "") -> int:
        """Shard index of the next sample, which takes ``size`` bytes in the tar
        (``key``, its key, is needed when there are several ranges)."""
        part = partition_of(key, self.parts)
        if self._count and (self._count >= self.max_samples or part != self._part or (
                self.max_bytes is not None and self._size + size > self.max_bytes)):
            self.index, self._count, self._size = self.index + 1, 0, 0
        self._part = part
        self._count += 1
        self._size += size
        return self.index


@dataclass(frozen=True)
class ShardPlan:
    """Which shard each sample goes to. Shards are runs of sorted keys, so the
    first key of each is the whole plan: a string per shard however many samples
    it holds, cheap to hand to every worker."""

    first_keys: tuple[str, ...]
    start: int

    @classmethod
    def assign(cls, sizes: Iterable[tuple[str, int]], cfg: ShardConfig, start: int,
               parts: int = 1) -> ShardPlan:
        """The plan ``ShardCutter`` makes of (key, tar bytes) pairs, one per sample
        (of one partition, or of all ``parts`` at once)."""
        cutter = ShardCutter(cfg.max_samples, cfg.max_bytes, start, parts)
        firsts: list[str] = []
        for key, size in sorted(sizes):
            if cutter.shard_of(size, key) - start == len(firsts):
                firsts.append(key)
        return cls(first_keys=tuple(firsts), start=start)

    @classmethod
    def join(cls, plans: Iterable[tuple[int, tuple[str, ...]]], start: int) -> ShardPlan:
        """The build's plan from its partitions' (partition, first keys): their
        shards one after another, in partition order."""
        return cls(first_keys=tuple(key for _, firsts in sorted(plans) for key in firsts),
                   start=start)

    @property
    def shards(self) -> int:
        return len(self.first_keys)

    def shard_of(self, key: str) -> int:
        return self.start + bisect.bisect_right(self.first_keys, key) - 1
