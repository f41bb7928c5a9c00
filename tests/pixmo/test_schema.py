"""Every schema with valid and invalid examples; our compiled validator must
agree with the reference draft 2020-12 implementation on all of them."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from pixmo.errors import PixmoError
from pixmo.rejects import Reason, Reject
from pixmo.schema import SCHEMA_NAMES, check, load_schema, schema_dir, validate
from tests.conftest import make_sample

SHA = "ab" * 32

SESSION = {"image": "images/0001.jpg", "audio": "audio/0001_a.flac", "annotator": "a17",
           "session_id": "s-0001"}
POINTS = {"image": "images/0001.jpg", "label": "red circle", "units": "pixels",
          "points": [{"x": 120.5, "y": 33.0}, {"x": 4, "y": 7}], "annotator": "a3",
          "collection_method": "pointing"}
STATS = {"format_version": 1, "shard": "pixmo-000000.tar", "index": 0, "samples": 2,
         "bytes": 20480, "sha256": SHA, "first_key": "k1", "last_key": "k2",
         "counts": {"transcripts": 1, "captions": 1, "points": 3, "qa": 0}}
DATASET = {"format_version": 1, "name": "demo", "engine": "beam",
           "counts": {"samples": 2, "shards": 1, "bytes": 20480},
           "shards": [{"shard": "pixmo-000000.tar", "samples": 2, "bytes": 20480, "sha256": SHA}],
           "ledger": [{"file": "captions.jsonl", "read": 3, "accepted": 2, "rejected": 1}],
           "rejects_by_reason": {"silence": 1}, "build_config": {"engine": "beam"}}
REJECT = {"source": "points.jsonl", "record": "12", "stage": "points", "reason": "out_of_bounds",
          "detail": "x=900.0 beyond width 640"}
MANIFEST = {"key": "k1", "shard": "pixmo-000000.tar", "image_sha256": SHA, "width": 640,
            "height": 480, "transcripts": 1, "captions": 1, "points": 2, "qa": 0}
TRANSCRIPT = {"text": "a red circle on the left", "annotator": "a17", "session_id": "s-1",
              "audio_sha256": SHA, "duration_s": 61.5, "language": "en",
              "language_probability": 0.98, "avg_logprob": -0.31, "no_speech_prob": 0.01,
              "compression_ratio": 1.4, "model": "tiny.en", "backend": "faster-whisper",
              "compute_type": "int8", "beam_size": 5,
              "segments": [{"start": 0.0, "end": 4.2, "text": "a red circle"}]}


def _sample() -> dict:
    sample = copy.deepcopy(make_sample(0).json)
    sample["transcripts"] = [TRANSCRIPT]
    sample["qa"] = [{"question": "What colour is it?", "answer": "Red."}]
    sample["points"].append({"label": "blue star", "points": [], "count": 0,
                             "collection_method": "counting", "annotators": ["a1", "a2"],
                             "agreement": 1.0})
    return sample


def _with(record: dict, path: str, value) -> dict:
    """A deep copy of ``record`` with the dotted ``path`` set (or removed if value is ...)."""
    out = copy.deepcopy(record)
    *parents, last = path.split(".")
    node = out
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is ...:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return out


VALID = {
    "caption_session": [SESSION, {**SESSION, "image": "https://example.org/a.jpg",
                                  "image_sha256": SHA, "language": "en"}],
    "point_annotation": [
        POINTS,
        {**POINTS, "units": "percent", "points": [{"x": 99.5, "y": 0.0}]},
        {**POINTS, "units": "normalized", "points": [{"x": 0.25, "y": 0.75}],
         "annotation_id": "p-7", "image_sha256": SHA},
        {**POINTS, "points": []},  # empty list: the label is not present
        {**POINTS, "collection_method": "counting",
         "points": [{"x": i, "y": i} for i in range(50)]},
        {k: v for k, v in POINTS.items() if k != "collection_method"},
    ],
    "sample": [make_sample(5).json, _sample(),
               {**make_sample(6).json, "transcripts": [
                   {"text": "um a cat", "model": "released", "backend": "released"}]}],
    "shard_stats": [STATS, {**STATS, "samples": 0, "first_key": None, "last_key": None},
                    {**STATS, "point_methods": {"pointing": 1}, "failures": {}}],
    "dataset": [DATASET, {k: DATASET[k] for k in ("format_version", "name", "counts", "shards")}],
    "reject": [REJECT, {**REJECT, "detail": ""}],
    "manifest_row": [MANIFEST],
}

INVALID = {
    "caption_session": [
        (_with(SESSION, "audio", ...), "", "must contain"),
        (_with(SESSION, "image", ""), "image", "must be longer"),
        (_with(SESSION, "image_sha256", "XYZ"), "image_sha256", "must match pattern"),
        (_with(SESSION, "language", "English"), "language", "must match pattern"),
        ({**SESSION, "imgae": "typo.jpg"}, "", "must not contain"),
        (_with(SESSION, "annotator", 17), "annotator", "must be string"),
    ],
    "point_annotation": [
        (_with(POINTS, "units", "px"), "units", "must be one of"),
        (_with(POINTS, "units", ...), "", "must contain"),
        (_with(POINTS, "label", ""), "label", "must be longer"),
        (_with(POINTS, "points.1.y", "7"), "points[1].y", "must be number"),
        (_with(POINTS, "points.0", {"x": 1}), "points[0]", "must contain"),
        (_with(POINTS, "points", None), "points", "must be array"),
        (_with(POINTS, "collection_method", "guessing"), "collection_method", "must be one of"),
    ],
    "sample": [
        (_with(_sample(), "key", "a.b"), "key", "must match pattern"),
        (_with(_sample(), "key", "_meta"), "key", "must match pattern"),
        (_with(_sample(), "schema_version", 2), "schema_version", "must be same as const"),
        (_with(_sample(), "points.0.points.0", [120.0, 3.0]), "points[0].points[0][0]",
         "must be smaller than or equal to 100"),
        (_with(_sample(), "points.0.points.0", [1.0]), "points[0].points[0]",
         "must contain at least 2 items"),
        (_with(_sample(), "image.format", "gif"), "image.format", "must be one of"),
        (_with(_sample(), "image.width", 0), "image.width", "must be bigger than or equal to 1"),
        (_with(_sample(), "transcripts.0.audio_sha256", ...), "transcripts[0]", "must contain"),
        (_with(_sample(), "transcripts.0", {"text": "hi", "model": "tiny.en"}), "transcripts[0]",
         "must contain"),  # only released transcripts may come without audio
        (_with(_sample(), "captions.0.method", "magic"), "captions[0].method", "must be one of"),
        (_with(_sample(), "sources", []), "sources", "must contain at least 1 items"),
    ],
    "shard_stats": [
        (_with(STATS, "shard", "pixmo-0.tar"), "shard", "must match pattern"),
        (_with(STATS, "sha256", "0" * 63), "sha256", "must match pattern"),
        (_with(STATS, "counts.qa", -1), "counts.qa", "must be bigger than or equal to 0"),
    ],
    "dataset": [
        (_with(DATASET, "format_version", 0), "format_version", "must be same as const"),
        (_with(DATASET, "ledger.0.read", ...), "ledger[0]", "must contain"),
        (_with(DATASET, "engine", "spark"), "engine", "must be one of"),
    ],
    "reject": [
        (_with(REJECT, "reason", "bad_vibes"), "reason", "must be one of"),
        (_with(REJECT, "record", 12), "record", "must be string"),
    ],
    "manifest_row": [(_with(MANIFEST, "height", 0), "height", "must be bigger than or equal")],
}


def _reference(name: str):
    return jsonschema.Draft202012Validator(load_schema(name))


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12_with_versioned_id(name):
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:pixmo-toolkit:schema:{name}:1"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_valid_examples(name):
    assert VALID[name]
    for record in VALID[name]:
        assert check(name, record) is None
        assert _reference(name).is_valid(record)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_invalid_examples_name_the_field(name):
    assert INVALID[name]
    for record, field, message in INVALID[name]:
        violation = check(name, record)
        assert violation is not None, record
        assert violation.field == field
        assert message in violation.message
        assert not _reference(name).is_valid(record)


def test_error_is_one_line_with_file_record_field_and_reason():
    bad = _with(POINTS, "points.1.y", "7")
    with pytest.raises(PixmoError) as info:
        validate("point_annotation", bad, file="raw/points.jsonl", record_id=12)
    text = str(info.value)
    assert text == ("raw/points.jsonl, record 12, field points[1].y: must be number "
                    "(schema point_annotation)")
    assert "\n" not in text
    assert isinstance(info.value, ValueError)


def test_reject_reasons_match_schema():
    assert [r.value for r in Reason] == load_schema("reject")["properties"]["reason"]["enum"]
    row = Reject("points", Reason.OUT_OF_BOUNDS, "x=900", "points.jsonl", "3").to_row()
    assert check("reject", row) is None
    assert row["reason"] == "out_of_bounds"


def test_schema_files_are_the_only_definitions():
    names = sorted(p.stem for p in schema_dir().glob("*.json"))
    assert names == sorted(SCHEMA_NAMES)
    for name in SCHEMA_NAMES:
        json.loads((schema_dir() / f"{name}.json").read_text())


def test_unknown_schema_name():
    with pytest.raises(ValueError, match="unknown schema 'samples'"):
        check("samples", {})
