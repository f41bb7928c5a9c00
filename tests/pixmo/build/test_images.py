"""The build's image bytes: resolved once per reference, staged when downloaded, attached
again (and checked) when their shard is written."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from pixmo import remote
from pixmo.build.config import BuildConfig
from pixmo.build.images import STAGING, attached, resolve_image
from pixmo.build.parts import Keyed, PlannedSample
from pixmo.dataset.format import json_bytes
from pixmo.errors import PixmoError
from pixmo.images import ImageConfig
from pixmo.raw import RawRecord
from pixmo.rejects import Reason
from tests.http_server import LocalServer, Reply
from tests.pixmo.build.test_stages import dot, make_raw, png


def keyed(image: str, record: str, **extra) -> Keyed:
    return Keyed("point_annotation", image, RawRecord("points.jsonl", record,
                                                      {**dot(image), **extra}))


def planned(image, key: str = "k") -> PlannedSample:
    obj = {"key": key, "image": image.sample_json()}
    return PlannedSample(key=key, json=json_bytes(obj), extension=image.extension, size=0)


def test_a_missing_image_rejects_every_record_naming_it(tmp_path):
    cfg = BuildConfig(str(make_raw(tmp_path / "raw", [])))
    image, rejects = resolve_image("images/none.png", [keyed("images/none.png", "1"),
                                                       keyed("images/none.png", "2")],
                                   cfg, tmp_path / "out")
    assert image is None
    assert [(r.stage, r.reason, r.record) for r in rejects] == [
        ("image", Reason.IMAGE_NOT_FOUND, "1"), ("image", Reason.IMAGE_NOT_FOUND, "2")]


def test_a_wrong_expected_hash_rejects_its_record_or_flags_the_image(tmp_path):
    raw = make_raw(tmp_path / "raw", [])
    digest = hashlib.sha256((raw / "images/a.png").read_bytes()).hexdigest()
    records = [keyed("images/a.png", "1", image_sha256=digest),
               keyed("images/a.png", "2", image_sha256="0" * 64), keyed("images/a.png", "3")]
    cfg = BuildConfig(str(raw))
    image, rejects = resolve_image("images/a.png", records, cfg, tmp_path / "out")
    assert image.sha256 == digest and image.data == b"" and not image.sha256_flagged
    assert [(r.reason, r.record) for r in rejects] == [(Reason.IMAGE_SHA256_MISMATCH, "2")]
    flag = replace(cfg, image=ImageConfig(sha256_policy="flag"))
    image, rejects = resolve_image("images/a.png", records, flag, tmp_path / "out")
    assert image.sha256_flagged and rejects == []


def test_attached_gives_the_bytes_back_and_refuses_changed_ones(tmp_path):
    raw = make_raw(tmp_path / "raw", [])
    cfg = BuildConfig(str(raw))
    out = remote.Folder(str(tmp_path / "out"))
    image, _ = resolve_image("images/a.png", [keyed("images/a.png", "1")], cfg, out.local)
    (sample,) = attached([planned(image)], cfg, out)
    assert sample.files == {"png": (raw / "images/a.png").read_bytes()}
    assert sample.json["image"]["sha256"] == image.sha256
    (raw / "images/a.png").write_bytes(png((1, 2, 3)))
    with pytest.raises(PixmoError, match="image changed while the build ran"):
        list(attached([planned(image)], cfg, out))


def test_a_downloaded_image_waits_in_staging_for_its_shard(tmp_path):
    data = png((9, 9, 9))
    cfg = BuildConfig(str(make_raw(tmp_path / "raw", [])))
    out = remote.Folder(str(tmp_path / "out"))
    with LocalServer() as server:
        url = server.route("/x.png", Reply(body=data))
        image, rejects = resolve_image(url, [keyed(url, "1")], cfg, out.local)
        assert rejects == [] and server.hits["/x.png"] == 1
        (sample,) = attached([planned(image)], cfg, out)
        assert server.hits["/x.png"] == 1  # read back from staging, not fetched again
    assert out.read_bytes(f"{STAGING}/{image.sha256}") == data
    assert sample.files == {"png": data}
