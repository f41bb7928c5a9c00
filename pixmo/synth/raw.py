"""Synthetic raw annotations (``pixmo synth``): a raw directory the build reads
as it reads real data (DESIGN.md, "Raw input contract"), with known truth.

- ``images/``: scenes of coloured shapes (``pixmo.synth.scenes``) as JPEG and PNG;
  a few JPEGs are stored rotated with an EXIF orientation tag, so the build's
  EXIF handling is exercised (their click coordinates refer to the stored
  pixels, as the contract says).
- ``audio/`` + ``captions.jsonl``: each image described aloud by one speaker,
  some by two or three, read by eSpeak NG with several voices and speeds
  (16 kHz mono FLAC).
- ``points.jsonl``: click logs of simulated annotators (``pixmo.synth.annotators``),
  counting labels with many instances among them.
- a small share of deliberately bad records (``pixmo.synth.bad``), one of every
  kind the build rejects, each listed in ``truth.json`` with the reason the build
  must give.
- ``truth.json``: per image the true objects and labels (centres in percent
  of the displayed image), the spoken texts, and the bad records.

Every file is a function of (seed, image index): scene ``i`` is the same
whatever ``scenes`` and ``first_index`` are, so a held-out raw directory is
``first_index`` past the training one. Every clip is spoken in a fresh
process (``pixmo.synth.voices``): the audio, too, is byte-identical for the
same seed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixmo.atomic import atomic_write_bytes
from pixmo.errors import ConfigError, PixmoError
from pixmo.synth.annotators import annotate
from pixmo.synth.bad import SHORT_CLIP_S, Line, bad_caption_lines, bad_point_lines, mix
from pixmo.synth.config import SynthConfig
from pixmo.synth.scenes import Scene, describe, make_scene, render
from pixmo.synth.voices import SpeechJob, speak_all

log = logging.getLogger(__name__)

# stored = displayed.transpose(op) for an EXIF orientation; the build undoes it
_STORE_OPS = {3: "ROTATE_180", 6: "ROTATE_90", 8: "ROTATE_270"}


@dataclass(frozen=True)
class SynthReport:
    """What ``synthesize`` wrote."""

    out_dir: str
    images: int
    caption_sessions: int
    point_annotations: int
    bad_records: int
    audio_seconds: float
    truth: str  # path of truth.json
    # the build's QC must be set so that good clips pass and the short clip does not
    qc_assumptions: dict[str, float | None] = field(default_factory=dict)


# --------------------------------------------------------------------------- images


def _encode(image: Any, fmt: str, orientation: int | None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", optimize=False)
    elif orientation is None:
        image.save(buf, format="JPEG", quality=90)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = image.transpose(getattr(Image.Transpose, _STORE_OPS[orientation]))
        stored.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


# --------------------------------------------------------------------------- one image


@dataclass
class _Image:
    truth: dict[str, Any]
    captions: list[Line]
    points: list[Line]
    speech: list[SpeechJob]


def _sessions(rng: np.random.Generator, scene: Scene, root: Path, name: str, digest: str,
              index: int, cfg: SynthConfig) -> tuple[list[Line], list[SpeechJob], list[dict]]:
    """The image described aloud by one speaker or more: the ``captions.jsonl`` lines,
    the clips to speak and the descriptions' truth."""
    speakers = 1 if rng.random() >= cfg.multi_speaker_share else int(rng.integers(2, 4))
    speaker_ids = rng.choice(np.arange(1, 13), size=speakers, replace=False)
    if cfg.speech_share < 1 and rng.random() >= cfg.speech_share:
        speaker_ids = speaker_ids[:0]  # only clicked, never described
    captions: list[Line] = []
    speech: list[SpeechJob] = []
    descriptions: list[dict] = []
    for k, speaker_id in enumerate(speaker_ids):
        text = describe(scene, rng)
        voice = cfg.voices[int(rng.integers(len(cfg.voices)))]
        target = rng.uniform(*cfg.clip_seconds)
        wpm = int(np.clip(round(len(text.split()) * 60 / target), cfg.min_words_per_minute,
                          cfg.max_words_per_minute))
        audio = f"audio/scene_{index:05d}_{k}.flac"
        session = {"image": name, "audio": audio, "annotator": f"s{int(speaker_id):02d}",
                   "session_id": f"s-{index:05d}-{k}"}
        if rng.random() < 0.5:
            session["image_sha256"] = digest
        if rng.random() < 0.5:
            session["language"] = "en"
        captions.append(Line(json.dumps(session)))
        speech.append(SpeechJob(text, str(root / audio), voice.name, wpm, voice.pitch,
                                cfg.pad_seconds))
        descriptions.append({"session_id": session["session_id"], "audio": audio, "text": text,
                             "voice": voice.name, "words_per_minute": wpm, "pitch": voice.pitch})
    return captions, speech, descriptions


def _make_image(root: Path, index: int, seed: int, cfg: SynthConfig) -> _Image:
    rng = np.random.default_rng([seed, index])
    scene = make_scene(rng, cfg.scene)
    picture = render(scene, rng)
    fmt = "png" if rng.random() < cfg.png_share else "jpg"
    orientation = None
    if fmt == "jpg" and rng.random() < cfg.exif_share:
        orientation = int(rng.choice(list(_STORE_OPS)))
    data = _encode(picture, fmt, orientation)
    name = f"images/scene_{index:05d}.{fmt}"
    atomic_write_bytes(root / name, data)
    digest = hashlib.sha256(data).hexdigest()

    captions, speech, descriptions = _sessions(rng, scene, root, name, digest, index, cfg)
    points, absent = annotate(rng, scene, name, orientation, digest, index, cfg)
    truth = {"image": name, "sha256": digest, "format": "png" if fmt == "png" else "jpeg",
             "width": scene.width, "height": scene.height, "exif_orientation": orientation,
             **scene.truth(), "absent_labels": absent, "descriptions": descriptions}
    return _Image(truth, captions, [Line(text) for text in points], speech)


# --------------------------------------------------------------------------- entry point


def synthesize(out_dir: str | os.PathLike[str], *, scenes: int, seed: int,
               config: SynthConfig | None = None) -> SynthReport:
    """Write a raw directory of ``scenes`` synthetic images with spoken
    captions, click logs, deliberately bad records and ``truth.json``."""
    cfg = config or SynthConfig()
    if scenes < 1:
        raise ConfigError(f"must be >= 1, got {scenes}", field="scenes")
    if seed < 0:
        raise ConfigError(f"must be >= 0, got {seed}", field="seed")
    root = Path(out_dir)
    for name in ("captions.jsonl", "points.jsonl", "truth.json"):
        if (root / name).exists():
            raise PixmoError("already holds synthetic data; choose an empty directory",
                             file=str(root / name))
    made = [_make_image(root, i, seed, cfg)
            for i in range(cfg.first_index, cfg.first_index + scenes)]
    captions = [line for m in made for line in m.captions]
    points = [line for m in made for line in m.points]
    speech = [job for m in made for job in m.speech]
    if cfg.bad_records:
        rng = np.random.default_rng([seed, 2**31 + cfg.first_index])
        images = [m.truth for m in made]
        bad_points = bad_point_lines(root, rng, images)
        bad_captions, bad_speech = bad_caption_lines(root, rng, images)
        captions, points = mix(rng, captions, bad_captions), mix(rng, points, bad_points)
        speech += bad_speech
    seconds = speak_all(speech, cfg.workers)
    durations = {Path(job.path).name: s for job, s in zip(speech, seconds, strict=True)}
    for m in made:
        for d in m.truth["descriptions"]:
            d["seconds"] = round(durations[Path(d["audio"]).name], 3)

    bad = []
    for file, lines in (("captions.jsonl", captions), ("points.jsonl", points)):
        atomic_write_bytes(root / file, "".join(f"{ln.text}\n" for ln in lines).encode())
        bad += [{"file": file, "record": str(n), "reason": ln.reason.value, "what": ln.what}
                for n, ln in enumerate(lines, start=1) if ln.reason is not None]
    good_seconds = [d["seconds"] for m in made for d in m.truth["descriptions"]]
    qc = {"min_speech_s_above": SHORT_CLIP_S, "min_speech_s_at_most": math.floor(
        min(good_seconds) * 0.6 * 10) / 10 if good_seconds else None}
    truth = {"seed": seed, "first_index": cfg.first_index, "scenes": scenes,
             "qc_assumptions": qc, "images": [m.truth for m in made], "bad_records": bad}
    atomic_write_bytes(root / "truth.json", json.dumps(truth, indent=1).encode() + b"\n")
    log.info("synthesised %d images, %d caption sessions, %d point annotations (%d bad) in %s",
             scenes, len(captions), len(points), len(bad), root)
    return SynthReport(out_dir=str(root), images=scenes, caption_sessions=len(captions),
                       point_annotations=len(points), bad_records=len(bad),
                       audio_seconds=round(sum(seconds), 3), truth=str(root / "truth.json"),
                       qc_assumptions=qc)
