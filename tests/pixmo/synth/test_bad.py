"""Deliberately bad records: one line for every reason, the files they name
written as broken as they claim, and scattered among the good lines without
disturbing them. (That the build gives exactly these reasons: test_raw.py.)"""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from pixmo.rejects import Reason
from pixmo.synth.bad import (
    SHORT_CLIP_S,
    SILENT_CLIP_S,
    Line,
    bad_caption_lines,
    bad_point_lines,
    mix,
)

IMAGES = [{"image": "images/scene_00000.jpg", "width": 320, "height": 240,
           "exif_orientation": 6},
          {"image": "images/scene_00001.png", "width": 400, "height": 300,
           "exif_orientation": None}]


def _record(line: Line) -> dict | None:
    try:
        return json.loads(line.text)
    except json.JSONDecodeError:
        return None


def test_point_lines_cover_every_point_reason(tmp_path):
    lines = bad_point_lines(tmp_path, np.random.default_rng(0), IMAGES)
    assert {line.reason for line in lines} == {
        Reason.IMAGE_NOT_FOUND, Reason.IMAGE_UNREADABLE, Reason.IMAGE_SHA256_MISMATCH,
        Reason.OUT_OF_BOUNDS, Reason.NON_FINITE_COORDINATE, Reason.UNKNOWN_UNITS,
        Reason.EMPTY_LABEL, Reason.TOO_MANY_POINTS, Reason.INVALID_RECORD}
    assert all(line.what for line in lines)
    assert (tmp_path / "images/broken_00000.jpg").read_bytes().startswith(b"\xff\xd8")
    records = {line.what: _record(line) for line in lines}
    assert records["a line cut short (not JSON)"] is None
    assert "points" not in records["no points field"]
    assert len(records["48 distinct clicks"]["points"]) == 48
    assert '"x": 1e999' in next(ln.text for ln in lines if ln.what == "x = 1e999")
    # three widths of the stored image: scene 0 is stored on its side (240 wide)
    (far,) = records["a click three widths to the right"]["points"]
    assert far["x"] in (3.0 * 240, 3.0 * 400)


def test_caption_lines_cover_every_caption_reason(tmp_path):
    lines, speech = bad_caption_lines(tmp_path, np.random.default_rng(0), IMAGES)
    assert [line.reason for line in lines] == [
        Reason.AUDIO_NOT_FOUND, Reason.SILENCE, Reason.SPEECH_TOO_SHORT,
        Reason.AUDIO_UNREADABLE, Reason.AUDIO_EMPTY, Reason.INVALID_RECORD,
        Reason.IMAGE_NOT_FOUND]
    records = [json.loads(line.text) for line in lines]
    assert [r.get("session_id") for r in records] == [
        "s-bad-0", "s-bad-1", "s-bad-2", "s-bad-3", "s-bad-4", None, "s-bad-6"]
    assert {r["image"] for r in records[:6]} <= {i["image"] for i in IMAGES}
    silent, rate = sf.read(str(tmp_path / "audio/bad_silent.flac"))
    assert len(silent) == SILENT_CLIP_S * rate and not silent.any()
    assert sf.info(str(tmp_path / "audio/bad_empty.wav")).frames == 0
    assert not (tmp_path / "audio/bad_missing.flac").exists()
    (short,) = speech
    assert short.max_seconds == SHORT_CLIP_S and short.path.endswith("audio/bad_short.flac")


def test_mix_keeps_the_good_lines_in_order_and_adds_every_bad_one():
    good = [Line(f"g{i}") for i in range(10)]
    bad = [Line(f"b{i}", Reason.INVALID_RECORD) for i in range(4)]
    mixed = mix(np.random.default_rng(3), good, bad)
    assert [ln for ln in mixed if ln.reason is None] == good
    assert sorted(ln.text for ln in mixed if ln.reason is not None) == [ln.text for ln in bad]
    assert mixed == mix(np.random.default_rng(3), good, bad)  # seeded positions
