"""The build's configuration: everything a build needs, recorded in dataset.json.

Given as a YAML file (``pixmo build --config``, every field below, nested as the
dataclasses nest) with command-line options put over it (``pixmo.config.load_config``).
A resumed build must have the config the interrupted one recorded (``refuse_other``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pixmo.captions import CaptionConfig
from pixmo.config import differences, load_config, to_plain
from pixmo.dataset.writer import ShardConfig
from pixmo.errors import PixmoError
from pixmo.images import ImageConfig
from pixmo.points.annotations import PointsConfig
from pixmo.speech.config import SpeechConfig

# settings that change how fast a build runs, never what it writes
SPEED_ONLY = frozenset({"captions.concurrency"})
# what an extend may change besides: it reads new input into the same dataset
EXTEND_FREE = SPEED_ONLY | {"raw_dir"}


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

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_json(), sort_keys=False)

    @classmethod
    def load(cls, path: str | None, overrides: dict[str, Any] | None = None,
             names: dict[str, str] | None = None) -> BuildConfig:
        """A config file (if any) with ``overrides`` by dotted key, named in errors by
        ``names`` (``pixmo.config.load_config``)."""
        return load_config(cls, path, overrides or {}, names or {})

    def refuse_other(self, recorded: dict[str, Any], where: str,
                     free: frozenset[str] = SPEED_ONLY) -> None:
        """A one-line error naming the fields where this config differs from the one an
        earlier run of ``where`` recorded (``to_json``), the ``free`` ones aside."""
        changed = [key for key in differences(recorded, self.to_json()) if key not in free]
        if changed:
            raise PixmoError(f"was built with another config ({', '.join(changed)} "
                             "differ): build with the same settings, or --mode overwrite to "
                             "start again", file=where)
