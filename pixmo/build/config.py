"""The build's configuration: everything a build needs, recorded in dataset.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pixmo.captions import CaptionConfig
from pixmo.config import to_plain
from pixmo.dataset.writer import ShardConfig
from pixmo.images import ImageConfig
from pixmo.points.annotations import PointsConfig
from pixmo.speech.config import SpeechConfig


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build needs; recorded in dataset.json."""

    raw_dir: str  # a local path or an fsspec URL
    name: str = "pixmo"
    transcribe: bool = True
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    points: PointsConfig = field(default_factory=PointsConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def to_json(self) -> dict[str, Any]:
        return to_plain(self)
