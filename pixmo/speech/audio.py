"""Audio decoding for spoken captions: any container PyAV (FFmpeg) reads, to
16 kHz mono float32, the input every Whisper backend expects.

One decoder (PyAV) covers wav, flac, ogg/opus, mp3, m4a and webm, so every
format goes through the same resampler and the same level measurements. The
sha256 is taken over the original bytes: the audio is the evidence that a
person spoke the caption, and the hash ties a transcript to that evidence.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixmo.config import above, check_fields
from pixmo.errors import PixmoError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# Level reported for digital silence, where 20*log10(0) is -inf and JSON has no -inf.
FLOOR_DBFS = -120.0


@dataclass(frozen=True)
class AudioConfig:
    """How audio is decoded. ``max_duration_s`` bounds memory for a hostile or
    mislabelled file, as the pixel limit does for images."""

    sample_rate: int = SAMPLE_RATE
    max_duration_s: float = 1200.0
    max_bytes: int = 200 * 1024 * 1024

    def __post_init__(self) -> None:
        check_fields(self, sample_rate=above(0), max_duration_s=above(0), max_bytes=above(0))


@dataclass(frozen=True)
class Audio:
    """Decoded mono audio plus what QC and provenance need about the source."""

    samples: np.ndarray  # float32, mono, in [-1, 1], at ``sample_rate``
    sample_rate: int
    sha256: str  # of the original file bytes
    source: str
    codec: str
    source_sample_rate: int
    source_channels: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def peak_dbfs(self) -> float:
        """Peak level in dB relative to full scale (0 dBFS = 1.0)."""
        if len(self.samples) == 0:
            return FLOOR_DBFS
        return _dbfs(float(np.max(np.abs(self.samples))))

    @property
    def rms_dbfs(self) -> float:
        """RMS level in dBFS; speech recordings usually sit between -35 and -15."""
        if len(self.samples) == 0:
            return FLOOR_DBFS
        x = self.samples.astype(np.float64)
        return _dbfs(math.sqrt(float(np.mean(x * x))))

    def summary(self) -> dict[str, float | int | str]:
        """JSON-able facts about the audio (no samples)."""
        return {
            "audio_sha256": self.sha256,
            "duration_s": round(self.duration_s, 3),
            "peak_dbfs": round(self.peak_dbfs, 2),
            "rms_dbfs": round(self.rms_dbfs, 2),
            "codec": self.codec,
            "source_sample_rate": self.source_sample_rate,
            "source_channels": self.source_channels,
        }


def _dbfs(amplitude: float) -> float:
    return max(FLOOR_DBFS, 20.0 * math.log10(amplitude)) if amplitude > 0 else FLOOR_DBFS


def read_audio(path: str | Path, cfg: AudioConfig | None = None) -> Audio:
    """Read and decode an audio file; raises ``PixmoError`` naming the file when
    it is missing, too large or not decodable audio."""
    cfg = cfg or AudioConfig()
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise PixmoError(f"cannot read audio: {e.strerror}", file=str(path)) from e
    if size > cfg.max_bytes:
        raise PixmoError(
            f"audio file has {size} bytes, more than max_bytes={cfg.max_bytes}", file=str(path)
        )
    return decode_audio(path.read_bytes(), source=str(path), cfg=cfg)


class AudioTooLong(PixmoError):
    """Audio that decodes but runs past ``max_duration_s``: over a limit, not broken."""


def decode_audio(data: bytes, *, source: str = "<bytes>", cfg: AudioConfig | None = None) -> Audio:
    """Decode the bytes of any audio container to mono float32 at ``cfg.sample_rate``.

    FFmpeg's resampler changes the rate, keeping the channels; the mono mix is
    their plain average (FFmpeg's own downmix scales stereo by 1/sqrt(2) per
    channel, which can clip when both channels carry the same signal).
    """
    import av

    cfg = cfg or AudioConfig()
    digest = hashlib.sha256(data).hexdigest()
    max_samples = int(cfg.max_duration_s * cfg.sample_rate)
    chunks: list[np.ndarray] = []
    n = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise PixmoError("no audio stream in file", file=source)
            stream = container.streams.audio[0]
            codec = stream.codec_context.name
            source_rate = int(stream.codec_context.sample_rate or 0)
            source_channels = int(stream.codec_context.channels or 0)
            # planar float at the target rate, channels kept: averaged below
            resampler = av.AudioResampler(format="fltp", rate=cfg.sample_rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))
                    n += len(chunks[-1])
                if n > max_samples:
                    raise AudioTooLong(
                        f"audio is longer than max_duration_s={cfg.max_duration_s}", file=source
                    )
            chunks.extend(out.to_ndarray().mean(axis=0) for out in resampler.resample(None))
    except av.FFmpegError as e:
        raise PixmoError(f"not decodable audio: {e}", file=source) from e
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    np.clip(samples, -1.0, 1.0, out=samples)
    log.debug("decoded %s: %s, %.2f s", source, codec, len(samples) / cfg.sample_rate)
    return Audio(
        samples=samples,
        sample_rate=cfg.sample_rate,
        sha256=digest,
        source=source,
        codec=codec,
        source_sample_rate=source_rate,
        source_channels=source_channels,
    )
