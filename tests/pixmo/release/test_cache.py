"""What an import keeps between runs: image bytes by name, and the URLs that failed."""

from __future__ import annotations

import hashlib

import pytest

from pixmo.errors import PixmoError
from pixmo.release.cache import FAILURES, ImageCache, read_failures, write_failures


def test_the_cache_keeps_bytes_by_the_hash_of_their_name(tmp_path):
    cache = ImageCache(tmp_path / "cache")
    url = "https://example.org/a.jpg"
    assert cache.get(url) is None
    cache.put(url, b"first")
    digest = hashlib.sha256(url.encode()).hexdigest()
    assert cache.path(url) == tmp_path / "cache" / digest[:2] / digest
    cache.put(url, b"second")  # bytes that are kept are never replaced
    assert cache.get(url) == b"first"
    cache.drop(url)
    cache.drop(url)
    assert cache.get(url) is None
    assert list((tmp_path / "cache" / digest[:2]).iterdir()) == []


def test_failures_are_jsonl_sorted_by_url_and_read_back(tmp_path):
    assert read_failures(tmp_path) == []
    failures = [{"url": "https://b.org/x", "reason": "download_failed", "status": 500},
                {"url": "https://a.org/y", "reason": "image_unreadable", "status": None}]
    write_failures(tmp_path, failures)
    assert (tmp_path / FAILURES).read_text().splitlines()[0] == (
        '{"reason": "image_unreadable", "status": null, "url": "https://a.org/y"}')
    assert read_failures(tmp_path) == failures[::-1]
    write_failures(tmp_path, [])
    assert (tmp_path / FAILURES).read_text() == "" and read_failures(tmp_path) == []


def test_a_broken_failure_list_names_its_line(tmp_path):
    (tmp_path / FAILURES).write_text('{"url": "x"}\n{oops\n')
    with pytest.raises(PixmoError, match="not JSON") as err:
        read_failures(tmp_path)
    assert err.value.record == 2
