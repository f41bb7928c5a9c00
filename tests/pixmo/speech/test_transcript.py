"""Transcript records: Whisper's repetition measure, the speaking time QC
reads, and a record that serialises to the same bytes for the same decoding."""

from __future__ import annotations

import json
from dataclasses import replace

from pixmo.speech.transcript import Segment, compression_ratio
from tests.pixmo.speech.conftest import SCRIPTS, make_transcript


def test_compression_ratio_flags_loops():
    assert compression_ratio("") == 0.0
    assert compression_ratio("There is a red ball. " * 16) > 4
    assert compression_ratio(SCRIPTS["kitchen.opus"]["text"]) < 2



def test_speech_time_counts_segments_with_words_within_the_clip():
    t = make_transcript(duration_s=20.0, segments=[
        Segment(0.0, 8.0, "a red car", -0.3, 0.1, 1.0), Segment(8.0, 12.0, "", None, 0.9, 0.0),
        Segment(12.0, 25.0, "on a road", -0.3, 0.1, 1.0)])
    assert t.speech_s == 16.0 and t.words == 30


def test_record_leaves_out_unset_fields_and_rounds_floats():
    t = make_transcript(avg_logprob=-0.123456789, no_speech_prob=None, segments=[
        Segment(0.0, 1.00004, "a", None, None, 1.0)])
    record = t.to_record()
    assert record["avg_logprob"] == -0.1235 and "no_speech_prob" not in record
    assert "session_id" not in record and "runtime" not in record
    assert record["segments"] == [{"start": 0.0, "end": 1.0, "text": "a",
                                   "compression_ratio": 1.0}]
    noise_below_the_rounding = replace(t, avg_logprob=-0.12345)
    assert json.dumps(noise_below_the_rounding.to_record()) == json.dumps(record)
