"""The training data's settings: the dataset mixture and everything that decides the batches.

``DataConfig`` is the ``data:`` section of a training YAML; with the world size it fixes the
batch sequence of every rank (``molmo/data/loader.py``), so a loader state saved under one
config resumes only under the same one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from molmo.data.tasks import DEFAULT_MAX_PIXELS, TaskConfig
from molmo.preprocess.config import PIXEL_DTYPES
from pixmo.config import at_least, check_fields, from_mapping, one_of
from pixmo.errors import ConfigError

MODES = ("finite", "resampled")
WORKER_TYPES = ("process", "thread")


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
        check_fields(self, rate=at_least(0), size=at_least(1))


@dataclass(frozen=True)
class DataConfig:
    """Everything that decides the batch sequence; part of the training config.

    ``batch_size`` is per rank. ``shuffle_block``: samples shuffled together inside a slot's
    slice; a worker holds that many raw samples per dataset in memory (lower it for mixtures of
    many datasets with large images). ``max_sequence_length`` truncates examples at the end
    (never inside the image block, which comes first); ``max_crops`` None keeps the
    preprocessor's. Batches pad to their longest example.
    ``pixel_dtype``: how crops travel from the workers. "uint8" (unnormalised pixels, a quarter
    of the bytes of float32) needs ``molmo.preprocess.batching.normalize_images`` on the
    consumer side, which the training loop runs on its device; "float32" yields model-ready
    crops.
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
        positive, counts = at_least(1), at_least(0)
        check_fields(self, mode=one_of(MODES), batch_size=positive, shuffle_block=positive,
                     max_sequence_length=positive, prefetch_factor=positive,
                     max_image_pixels=positive, num_workers=counts, seed=counts,
                     max_consecutive_failures=counts, worker_timeout_s=counts,
                     max_crops=positive, worker_type=one_of(WORKER_TYPES),
                     pixel_dtype=one_of(PIXEL_DTYPES))
        if self.mode == "finite" and any(d.rate is not None for d in self.datasets):
            raise ConfigError("'finite' reads every sample of every dataset once; dataset rates "
                              "need mode 'resampled'", field="DataConfig.mode")

    @property
    def slots_per_rank(self) -> int:
        """Slots each rank reads: one per worker, or one in the main process without workers."""
        return max(self.num_workers, 1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """From the ``data:`` section of a training YAML; unknown keys are refused."""
        return from_mapping(cls, data, "data")
