"""Synthetic raw annotations (``pixmo synth``): a raw directory the build reads
as it reads real data (DESIGN.md, "Raw input contract"), with known truth.

- ``images/``: scenes of coloured shapes (``pixmo.synth.scenes``) as JPEG and PNG;
  a few JPEGs are stored rotated with an EXIF orientation tag, so the build's
  EXIF handling is exercised (their click coordinates refer to the stored
  pixels, as the contract says).
- ``audio/`` + ``captions.jsonl``: each image described aloud by one speaker,
  some by two or three, read by eSpeak NG with several voices and speeds
  (16 kHz mono FLAC).
- ``points.jsonl``: click logs of simulated annotators: Gaussian position
  noise, now and then a missed object or a duplicate click, one or two
  annotators per label, "not present" labels with no points for absent
  objects, and counting labels with many instances.
- a small share of deliberately bad records, one of every kind the build
  rejects, each listed in ``truth.json`` with the reason the build must give.
- ``truth.json``: per image the true objects and labels (centres in percent
  of the displayed image), the spoken texts, and the bad records.

Every file is a function of (seed, image index): scene ``i`` is the same
whatever ``scenes`` and ``first_index`` are, so a held-out raw directory is
``first_index`` past the training one. eSpeak NG carries state from one
utterance to the next within a process, so every clip is spoken in a fresh
process: the audio, too, is byte-identical for the same seed.
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
from pixmo.rejects import Reason
from pixmo.synth.scenes import Scene, SceneConfig, describe, make_scene, render

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# stored = displayed.transpose(op) for an EXIF orientation; the build undoes it
_STORE_OPS = {3: "ROTATE_180", 6: "ROTATE_90", 8: "ROTATE_270"}
# the QC settings under which truth.json's reasons hold (see SynthReport.qc_assumptions)
SHORT_CLIP_S = 2.0
SILENT_CLIP_S = 8.0


@dataclass(frozen=True)
class Voice:
    name: str
    pitch: int


@dataclass(frozen=True)
class SynthConfig:
    """How synthetic raw data is made. ``first_index`` numbers the first image
    (a held-out set starts past the training set); shares are probabilities."""

    scene: SceneConfig = field(default_factory=SceneConfig)
    first_index: int = 0
    png_share: float = 0.3
    exif_share: float = 0.15
    multi_speaker_share: float = 0.3  # images described by 2-3 speakers
    speech_share: float = 1.0  # images with spoken descriptions; the rest only have clicks
    # eSpeak NG's female variants (+f1..+f5) add breath noise that differs from run
    # to run; these voices give the same samples every time
    voices: tuple[Voice, ...] = (Voice("en-us", 50), Voice("en", 55), Voice("en+m3", 40),
                                 Voice("en-gb-x-rp", 65), Voice("en-us+m7", 45))
    min_words_per_minute: int = 150
    max_words_per_minute: int = 180
    clip_seconds: tuple[float, float] = (10.0, 18.0)  # target length of a description
    pad_seconds: float = 0.5  # silence before and after each description
    two_annotator_share: float = 0.5
    click_sigma: float = 0.15  # click noise, as a share of the object's radius
    miss_rate: float = 0.08
    duplicate_rate: float = 0.1
    absent_label_share: float = 0.6  # images with a "not present" label
    bad_records: bool = True
    workers: int = 2  # processes speaking clips

    def __post_init__(self) -> None:
        if self.first_index < 0:
            raise ConfigError(f"must be >= 0, got {self.first_index}",
                              field="SynthConfig.first_index")
        for name in ("png_share", "exif_share", "multi_speaker_share", "speech_share",
                     "two_annotator_share",
                     "miss_rate", "duplicate_rate", "absent_label_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"must be in [0, 1], got {value}", field=f"SynthConfig.{name}")
        if not self.voices:
            raise ConfigError("must not be empty", field="SynthConfig.voices")
        if not 80 <= self.min_words_per_minute <= self.max_words_per_minute <= 450:
            raise ConfigError(f"needs 80 <= min_words_per_minute <= max_words_per_minute <= 450, "
                              f"got {self.min_words_per_minute}, {self.max_words_per_minute}",
                              field="SynthConfig")
        if self.workers < 1:
            raise ConfigError(f"must be >= 1, got {self.workers}", field="SynthConfig.workers")


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


@dataclass(frozen=True)
class SpeechJob:
    """One clip to speak; run in a fresh process (``_speak``)."""

    text: str
    path: str
    voice: str
    words_per_minute: int
    pitch: int
    pad_seconds: float = 0.0
    max_seconds: float | None = None


@dataclass
class _Line:
    """One line of a raw file; ``reason`` is set for a deliberately bad one."""

    text: str
    reason: Reason | None = None
    what: str = ""


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


def stored_point(x: float, y: float, orientation: int | None) -> tuple[float, float]:
    """Percent of the displayed image to percent of the stored one: the inverse
    of ``pixmo.points.annotations.orient_point``."""
    if orientation is None or orientation == 1:
        return x, y
    if orientation == 3:
        return 100.0 - x, 100.0 - y
    if orientation == 6:
        return y, 100.0 - x
    if orientation == 8:
        return 100.0 - y, x
    raise ValueError(f"orientation {orientation} is not one synth writes")


# --------------------------------------------------------------------------- clicks


def _clicks(rng: np.random.Generator, scene: Scene, label: str,
            cfg: SynthConfig) -> list[tuple[float, float]]:
    """One annotator's clicks on every instance of ``label``, in displayed pixels."""
    objs = scene.groups()[label]
    kept = [o for o in objs if rng.random() >= cfg.miss_rate] or objs[:1]
    clicks = []
    for o in kept:
        x = float(np.clip(o.x + rng.normal(0, cfg.click_sigma * o.radius), 0, scene.width - 0.01))
        y = float(np.clip(o.y + rng.normal(0, cfg.click_sigma * o.radius), 0,
                          scene.height - 0.01))
        clicks.append((x, y))
        if rng.random() < cfg.duplicate_rate:  # a double click, a pixel or so away
            clicks.append((float(np.clip(x + rng.normal(0, 0.7), 0, scene.width - 0.01)),
                           float(np.clip(y + rng.normal(0, 0.7), 0, scene.height - 0.01))))
    order = rng.permutation(len(clicks))
    return [clicks[int(i)] for i in order]


def _in_units(points: list[tuple[float, float]], scene: Scene, orientation: int | None,
              units: str) -> list[dict[str, float]]:
    """Displayed pixels to the record's units of the stored image."""
    stored_w, stored_h = ((scene.height, scene.width) if orientation in (6, 8)
                          else (scene.width, scene.height))
    out = []
    for x, y in points:
        sx, sy = stored_point(x / scene.width * 100, y / scene.height * 100, orientation)
        if units == "pixels":
            out.append({"x": round(sx / 100 * stored_w, 2), "y": round(sy / 100 * stored_h, 2)})
        elif units == "normalized":
            out.append({"x": round(sx / 100, 5), "y": round(sy / 100, 5)})
        else:
            out.append({"x": round(sx, 3), "y": round(sy, 3)})
    return out


def _absent_label(rng: np.random.Generator, scene: Scene, cfg: SceneConfig) -> str:
    present = set(scene.groups())
    while True:
        label = f"{rng.choice(cfg.colours)} {rng.choice(cfg.shapes)}"
        if label not in present:
            return label


# --------------------------------------------------------------------------- one image


@dataclass
class _Image:
    truth: dict[str, Any]
    captions: list[_Line]
    points: list[_Line]
    speech: list[SpeechJob]


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

    speakers = 1 if rng.random() >= cfg.multi_speaker_share else int(rng.integers(2, 4))
    speaker_ids = rng.choice(np.arange(1, 13), size=speakers, replace=False)
    if cfg.speech_share < 1 and rng.random() >= cfg.speech_share:
        speaker_ids = speaker_ids[:0]  # only clicked, never described
    captions, speech, descriptions = [], [], []
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
        captions.append(_Line(json.dumps(session)))
        speech.append(SpeechJob(text, str(root / audio), voice.name, wpm, voice.pitch,
                                cfg.pad_seconds))
        descriptions.append({"session_id": session["session_id"], "audio": audio, "text": text,
                             "voice": voice.name, "words_per_minute": wpm, "pitch": voice.pitch})

    points = []
    labels = list(scene.groups())
    absent = [_absent_label(rng, scene, cfg.scene)] if rng.random() < cfg.absent_label_share else []
    for label in [*labels, *absent]:
        method = "counting" if label == scene.counting_label else "pointing"
        annotators = 2 if rng.random() < cfg.two_annotator_share else 1
        clickers = rng.choice(np.arange(1, 21), size=annotators, replace=False)
        for clicker in clickers:
            units = str(rng.choice(["pixels", "percent", "normalized"]))
            clicks = _clicks(rng, scene, label, cfg) if label in labels else []
            record = {"image": name, "label": label,
                      "points": _in_units(clicks, scene, orientation, units), "units": units,
                      "annotator": f"p{int(clicker):02d}", "collection_method": method,
                      "annotation_id": f"p-{index:05d}-{len(points)}"}
            if rng.random() < 0.3:
                record["image_sha256"] = digest
            points.append(_Line(json.dumps(record)))

    truth = {"image": name, "sha256": digest, "format": "png" if fmt == "png" else "jpeg",
             "width": scene.width, "height": scene.height, "exif_orientation": orientation,
             **scene.truth(), "absent_labels": absent, "descriptions": descriptions}
    return _Image(truth, captions, points, speech)


# --------------------------------------------------------------------------- bad records


def _bad_records(root: Path, rng: np.random.Generator, images: list[dict[str, Any]]
                 ) -> tuple[list[_Line], list[_Line], list[SpeechJob]]:
    """One record of every kind the build rejects, each naming a good image
    unless its fault is the image."""

    def pick() -> dict[str, Any]:
        return images[int(rng.integers(len(images)))]

    def point(target: dict[str, Any], **changes: Any) -> str:
        record = {"image": target["image"], "label": "red circle",
                  "points": [{"x": 50.0, "y": 50.0}], "units": "percent",
                  "annotator": "p99", "collection_method": "pointing", **changes}
        return json.dumps({k: v for k, v in record.items() if v is not None})

    img = pick()
    stored_w, stored_h = ((img["height"], img["width"]) if img["exif_orientation"] in (6, 8)
                          else (img["width"], img["height"]))
    atomic_write_bytes(root / "images/broken_00000.jpg", b"\xff\xd8\xff\xe0 not a jpeg at all")
    grid = [{"x": 5.0 + 11.0 * (i % 8), "y": 5.0 + 15.0 * (i // 8)} for i in range(48)]
    points = [
        _Line(point(img, image="images/missing_00000.jpg"), Reason.IMAGE_NOT_FOUND,
              "names an image that does not exist"),
        _Line(point(img, image="images/broken_00000.jpg"), Reason.IMAGE_UNREADABLE,
              "names a file that is not an image"),
        _Line(point(img, image_sha256=hashlib.sha256(b"other").hexdigest()),
              Reason.IMAGE_SHA256_MISMATCH, "image_sha256 of other bytes"),
        _Line(point(img, units="pixels", points=[{"x": stored_w * 3.0, "y": stored_h / 2}]),
              Reason.OUT_OF_BOUNDS, "a click three widths to the right"),
        # JSON has no NaN; 1e999 is valid JSON that no float holds (it reads as inf)
        _Line(point(img).replace('"x": 50.0', '"x": 1e999', 1), Reason.NON_FINITE_COORDINATE,
              "x = 1e999"),
        _Line(point(img, units="inches"), Reason.UNKNOWN_UNITS, "units inches"),
        _Line(point(img, label=""), Reason.EMPTY_LABEL, "empty label"),
        _Line(point(img, points=grid, collection_method="counting"), Reason.TOO_MANY_POINTS,
              "48 distinct clicks"),
        _Line(point(img, points=None), Reason.INVALID_RECORD, "no points field"),
        _Line(point(img)[:40], Reason.INVALID_RECORD, "a line cut short (not JSON)"),
    ]

    def session(k: int, audio: str, **changes: Any) -> str:
        record = {"image": pick()["image"], "audio": audio, "annotator": "s99",
                  "session_id": f"s-bad-{k}", **changes}
        return json.dumps({k: v for k, v in record.items() if v is not None})

    sf = _soundfile()
    with io.BytesIO() as buf:
        sf.write(buf, np.zeros(int(SILENT_CLIP_S * SAMPLE_RATE), np.float32), SAMPLE_RATE,
                 format="FLAC", subtype="PCM_16")
        atomic_write_bytes(root / "audio/bad_silent.flac", buf.getvalue())
    with io.BytesIO() as buf:
        sf.write(buf, np.zeros(0, np.float32), SAMPLE_RATE, format="WAV", subtype="PCM_16")
        atomic_write_bytes(root / "audio/bad_empty.wav", buf.getvalue())
    atomic_write_bytes(root / "audio/bad_not_audio.flac",
                       b"this is a text file that someone renamed to .flac\n" * 20)
    speech = [SpeechJob("There is a red circle and a blue square in the middle of the picture.",
                        str(root / "audio/bad_short.flac"), "en-us", 160, 50,
                        max_seconds=SHORT_CLIP_S)]
    captions = [
        _Line(session(0, "audio/bad_missing.flac"), Reason.AUDIO_NOT_FOUND,
              "names an audio file that does not exist"),
        _Line(session(1, "audio/bad_silent.flac"), Reason.SILENCE,
              f"{SILENT_CLIP_S:g} s of digital silence"),
        _Line(session(2, "audio/bad_short.flac"), Reason.SPEECH_TOO_SHORT,
              f"speech cut to {SHORT_CLIP_S:g} s"),
        _Line(session(3, "audio/bad_not_audio.flac"), Reason.AUDIO_UNREADABLE,
              "a text file named .flac"),
        _Line(session(4, "audio/bad_empty.wav"), Reason.AUDIO_EMPTY, "a WAV with no samples"),
        _Line(session(5, "audio/bad_missing.flac", session_id=None, annotator=None),
              Reason.INVALID_RECORD, "no session_id or annotator"),
        _Line(session(6, "audio/bad_missing.flac", image="images/missing_00001.png"),
              Reason.IMAGE_NOT_FOUND, "names an image that does not exist"),
    ]
    return captions, points, speech


def _mix(rng: np.random.Generator, good: list[_Line], bad: list[_Line]) -> list[_Line]:
    """Bad lines scattered among the good ones, at seeded positions."""
    lines = list(good)
    for line in bad:
        lines.insert(int(rng.integers(len(lines) + 1)), line)
    return lines


# --------------------------------------------------------------------------- speech


def _soundfile() -> Any:
    try:
        import soundfile
    except ImportError as exc:
        raise PixmoError("synthetic audio needs 'soundfile': pip install "
                         "'pixmo-toolkit[speech,synth]'") from exc
    return soundfile


def _speak(job: SpeechJob) -> float:
    """Speak one clip in a fresh process; returns its seconds."""
    from pixmo.synth.tts import synthesize_in_fresh_process

    path = synthesize_in_fresh_process(job.text, job.path, voice=job.voice,
                                       words_per_minute=job.words_per_minute, pitch=job.pitch,
                                       sample_rate=SAMPLE_RATE, pad_seconds=job.pad_seconds,
                                       max_seconds=job.max_seconds)
    info = _soundfile().info(str(path))
    return info.frames / info.samplerate


def speak_all(jobs: list[SpeechJob], workers: int) -> list[float]:
    """Every clip in its own fresh process (eSpeak NG's state would otherwise
    carry over between clips and change the samples), ``workers`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from pixmo.synth.tts import speaker

    if not jobs:
        return []
    speaker()  # a missing espeakng-loader fails here, with its message
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_speak, jobs))


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
        bad_captions, bad_points, bad_speech = _bad_records(root, rng, [m.truth for m in made])
        captions, points = _mix(rng, captions, bad_captions), _mix(rng, points, bad_points)
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
