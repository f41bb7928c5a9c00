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


@dataclass
class ShardCutter:
    """Cuts a stream of samples, in sorted key order, into shards: before a
    sample that would pass ``max_samples`` or ``max_bytes``, with shards
    numbered from ``start``. Engines that cannot sort everything in memory
    feed it in key order and hold one shard at a time."""

    max_samples: int
    max_bytes: int | None = None
    start: int = 0
    index: int = field(init=False)  # the shard being filled
    _count: int = field(default=0, init=False, repr=False)
    _size: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = self.start

    def shard_of(self, size: int) -> int:
        """Shard index of the next sample, which takes ``size`` bytes in the tar."""
        if self._count and (self._count >= self.max_samples or (
                self.max_bytes is not None and self._size + size > self.max_bytes)):
            self.index, self._count, self._size = self.index + 1, 0, 0
        self._count += 1
        self._size += size
        return self.index


@dataclass(frozen=True)
class ShardPlan:
    """Which shard each sample goes to. Shards are runs of sorted keys, so the
    first key of each is the whole plan: a few strings however many samples,
    cheap to hand to every worker."""

    first_keys: tuple[str, ...]
    start: int

    @classmethod
    def assign(cls, sizes: Iterable[tuple[str, int]], cfg: ShardConfig, start: int
               ) -> ShardPlan:
        """The plan ``ShardCutter`` makes of (key, tar bytes) pairs, one per sample."""
        cutter = ShardCutter(cfg.max_samples, cfg.max_bytes, start)
        firsts: list[str] = []
        for key, size in sorted(sizes):
            if cutter.shard_of(size) - start == len(firsts):
                firsts.append(key)
        return cls(first_keys=tuple(firsts), start=start)

    @property
    def shards(self) -> int:
        return len(self.first_keys)

    def shard_of(self, key: str) -> int:
        return self.start + bisect.bisect_right(self.first_keys, key) - 1
