"""Deliberately bad raw records: one of every kind the build rejects, each
naming a good image unless its fault is the image, scattered among the good
lines at seeded positions and listed in ``truth.json`` with the reason the
build must give.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixmo.atomic import atomic_write_bytes
from pixmo.rejects import Reason
from pixmo.synth.voices import SAMPLE_RATE, SpeechJob, write_samples

# the QC settings under which truth.json's reasons hold (see SynthReport.qc_assumptions)
SHORT_CLIP_S = 2.0
SILENT_CLIP_S = 8.0


@dataclass
class Line:
    """One line of a raw file; ``reason`` is set for a deliberately bad one."""

    text: str
    reason: Reason | None = None
    what: str = ""


def _pick(rng: np.random.Generator, images: list[dict[str, Any]]) -> dict[str, Any]:
    return images[int(rng.integers(len(images)))]


def _json_without_nones(record: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in record.items() if v is not None})


def bad_point_lines(root: Path, rng: np.random.Generator,
                    images: list[dict[str, Any]]) -> list[Line]:
    """A ``points.jsonl`` line for every reason the point stages reject; writes the
    broken image one of them names."""
    img = _pick(rng, images)

    def point(**changes: Any) -> str:
        return _json_without_nones({"image": img["image"], "label": "red circle",
                                    "points": [{"x": 50.0, "y": 50.0}], "units": "percent",
                                    "annotator": "p99", "collection_method": "pointing",
                                    **changes})

    stored_w, stored_h = ((img["height"], img["width"]) if img["exif_orientation"] in (6, 8)
                          else (img["width"], img["height"]))
    atomic_write_bytes(root / "images/broken_00000.jpg", b"\xff\xd8\xff\xe0 not a jpeg at all")
    grid = [{"x": 5.0 + 11.0 * (i % 8), "y": 5.0 + 15.0 * (i // 8)} for i in range(48)]
    return [
        Line(point(image="images/missing_00000.jpg"), Reason.IMAGE_NOT_FOUND,
             "names an image that does not exist"),
        Line(point(image="images/broken_00000.jpg"), Reason.IMAGE_UNREADABLE,
             "names a file that is not an image"),
        Line(point(image_sha256=hashlib.sha256(b"other").hexdigest()),
             Reason.IMAGE_SHA256_MISMATCH, "image_sha256 of other bytes"),
        Line(point(units="pixels", points=[{"x": stored_w * 3.0, "y": stored_h / 2}]),
             Reason.OUT_OF_BOUNDS, "a click three widths to the right"),
        # JSON has no NaN; 1e999 is valid JSON that no float holds (it reads as inf)
        Line(point().replace('"x": 50.0', '"x": 1e999', 1), Reason.NON_FINITE_COORDINATE,
             "x = 1e999"),
        Line(point(units="inches"), Reason.UNKNOWN_UNITS, "units inches"),
        Line(point(label=""), Reason.EMPTY_LABEL, "empty label"),
        Line(point(points=grid, collection_method="counting"), Reason.TOO_MANY_POINTS,
             "48 distinct clicks"),
        Line(point(points=None), Reason.INVALID_RECORD, "no points field"),
        Line(point()[:40], Reason.INVALID_RECORD, "a line cut short (not JSON)"),
    ]


def bad_caption_lines(root: Path, rng: np.random.Generator, images: list[dict[str, Any]]
                      ) -> tuple[list[Line], list[SpeechJob]]:
    """A ``captions.jsonl`` line for every reason the caption stages reject, and the
    one clip among them still to speak; writes the other bad audio files."""

    def session(k: int, audio: str, **changes: Any) -> str:
        return _json_without_nones({"image": _pick(rng, images)["image"], "audio": audio,
                                    "annotator": "s99", "session_id": f"s-bad-{k}", **changes})

    write_samples(root / "audio/bad_silent.flac",
                  np.zeros(int(SILENT_CLIP_S * SAMPLE_RATE), np.float32), "FLAC")
    write_samples(root / "audio/bad_empty.wav", np.zeros(0, np.float32), "WAV")
    atomic_write_bytes(root / "audio/bad_not_audio.flac",
                       b"this is a text file that someone renamed to .flac\n" * 20)
    speech = [SpeechJob("There is a red circle and a blue square in the middle of the picture.",
                        str(root / "audio/bad_short.flac"), "en-us", 160, 50,
                        max_seconds=SHORT_CLIP_S)]
    captions = [
        Line(session(0, "audio/bad_missing.flac"), Reason.AUDIO_NOT_FOUND,
             "names an audio file that does not exist"),
        Line(session(1, "audio/bad_silent.flac"), Reason.SILENCE,
             f"{SILENT_CLIP_S:g} s of digital silence"),
        Line(session(2, "audio/bad_short.flac"), Reason.SPEECH_TOO_SHORT,
             f"speech cut to {SHORT_CLIP_S:g} s"),
        Line(session(3, "audio/bad_not_audio.flac"), Reason.AUDIO_UNREADABLE,
             "a text file named .flac"),
        Line(session(4, "audio/bad_empty.wav"), Reason.AUDIO_EMPTY, "a WAV with no samples"),
        Line(session(5, "audio/bad_missing.flac", session_id=None, annotator=None),
             Reason.INVALID_RECORD, "no session_id or annotator"),
        Line(session(6, "audio/bad_missing.flac", image="images/missing_00001.png"),
             Reason.IMAGE_NOT_FOUND, "names an image that does not exist"),
    ]
    return captions, speech


def mix(rng: np.random.Generator, good: list[Line], bad: list[Line]) -> list[Line]:
    """Bad lines scattered among the good ones, at seeded positions."""
    lines = list(good)
    for line in bad:
        lines.insert(int(rng.integers(len(lines) + 1)), line)
    return lines
