"""Tests of pixmo.dataset.format: key rules, canonical JSON, the sample and its stats."""

from __future__ import annotations

import pytest

from pixmo.dataset.format import ShardSample, ShardStats, json_bytes, shard_name, validate_key
from pixmo.dataset.writer import ShardWriter
from pixmo.errors import PixmoError
from tests.conftest import make_sample


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("img.v2", "contains '.'"),
        ("a/b", "contains '/'"),
        ("_meta", "starts with '_'"),
        ("", "non-empty"),
        ("space key", "must match"),
        ("x" * 129, "at most 128"),
    ],
)
def test_bad_keys_are_refused(tmp_path, key, message):
    with pytest.raises(PixmoError, match=message) as info:
        validate_key(key)
    assert "field key" in str(info.value)
    sample = make_sample(0)
    sample = ShardSample(key=key, json={**sample.json, "key": key}, files=sample.files)
    with pytest.raises(PixmoError, match=message), ShardWriter(tmp_path) as writer:
        writer.write(sample)
    assert list((tmp_path / "shards").glob("*")) == []


def test_good_keys_pass():
    for key in ("abc", "A-1_b", "0123456789abcdef", "-x"):
        assert validate_key(key) == key


def test_json_members_have_one_encoding():
    assert json_bytes({"b": 1, "a": "é", "c": [1, 2]}) == '{"a":"é","b":1,"c":[1,2]}'.encode()


def test_members_come_in_extension_order_with_json_encoded():
    sample = ShardSample("k", {"z": 1, "a": 2}, {"png": b"P", "txt": b"T", "flac": b"F"})
    assert sample.members() == [("flac", b"F"), ("json", b'{"a":2,"z":1}'), ("png", b"P"),
                                ("txt", b"T")]
    with pytest.raises(PixmoError, match="must be lower-case"):
        ShardSample("k", {}, {"PNG": b"P"}).members()


def test_shard_stats_round_trip_through_their_schema():
    stats = ShardStats(shard=shard_name(7), index=7, samples=2, bytes=10240, sha256="0" * 64,
                       first_key="a", last_key="b",
                       counts={"transcripts": 0, "captions": 2, "points": 1, "qa": 0})
    assert stats.shard == "pixmo-000007.tar"
    assert stats.to_json()["format_version"] == 1
    assert ShardStats.from_json(stats.to_json(), file="x.json") == stats
    with pytest.raises(PixmoError, match="x.json"):
        ShardStats.from_json({**stats.to_json(), "sha256": "short"}, file="x.json")
    assert "point_methods" not in stats.to_json()  # unknown: older markers, read as None
    counted = ShardStats(**{**stats.__dict__, "point_methods": {"pointing": 1}, "failures": {}})
    assert ShardStats.from_json(counted.to_json(), file="x.json") == counted
