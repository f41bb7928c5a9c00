"""Importing released PixMo parquet files: real parquet (written with the
released column names and types), real images served by a local HTTP server
that answers 200, 404, 429 with Retry-After, slowly, truncated and with the
wrong bytes; a second run retries the failures and reuses the cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pixmo.build import BuildConfig
from pixmo.build.stages import join_image
from pixmo.dataset.format import json_bytes
from pixmo.dataset.reader import iter_samples
from pixmo.dataset.samples import ImageAnnotations, build_sample, sample_key
from pixmo.dataset.tables import read_dataset_json, read_rejects
from pixmo.dataset.verify import verify
from pixmo.dataset.writer import ShardConfig
from pixmo.errors import PixmoError
from pixmo.fetch import FetchConfig
from pixmo.images import decode_image
from pixmo.points.masks import decode_mask
from pixmo.release.cache import FAILURES, read_failures
from pixmo.release.importer import ImportConfig, import_release
from tests.http_server import LocalServer, Reply
from tests.pixmo.release.test_subsets import image_bytes, sha, write_parquet

# one second: ample for any local reply, however busy the machine; the slow host's reply is
# held, so its timeout always fires first
FETCH = FetchConfig(timeout_s=1.0, retries=1, backoff_base_s=0.01, backoff_cap_s=0.02,
                    retry_after_cap_s=0.05, max_bytes=1 << 20)
CONFIG = ImportConfig(fetch=FETCH, workers=4)


def accounted(out) -> tuple[list[tuple[str, str]], list[dict]]:
    """(file, record) of every row in a sample, and the reject rows."""
    in_samples = [(s["file"], s["record"]) for sample in iter_samples(out)
                  for s in sample.json["sources"]]
    return in_samples, read_rejects(out / "rejects.parquet")


def assert_ledger_closes(out, n_rows: int, parquet: str) -> None:
    in_samples, rejects = accounted(out)
    seen = in_samples + [(r["source"], r["record"]) for r in rejects]
    assert sorted(seen) == sorted((parquet, str(i)) for i in range(1, n_rows + 1))
    assert verify(out) == []


@pytest.fixture
def server():
    with LocalServer() as srv:
        yield srv


def test_points_import_with_misbehaving_hosts_then_a_rerun(tmp_path, server):
    red, green, blue = image_bytes((200, 0, 0)), image_bytes((0, 200, 0)), image_bytes((0, 0, 200))
    late, gone = image_bytes((90, 90, 0)), image_bytes((0, 90, 90))
    good_trunc = image_bytes((10, 20, 30), size=(80, 60))
    ok = server.route("/red.jpg", Reply(body=red))
    copy = server.route("/copy-of-red.jpg", Reply(body=red))  # same bytes, second URL
    busy = server.route("/busy.jpg", Reply(429, headers={"Retry-After": "120"}), Reply(body=green))
    missing = server.route("/gone.jpg", Reply(404))
    slow = server.route("/slow.jpg", Reply(body=late, held=True))
    trunc = server.route("/trunc.jpg", Reply(body=good_trunc[: len(good_trunc) // 2]))
    wrong = server.route("/wrong.jpg", Reply(body=blue))
    pts = [{"x": 25.0, "y": 50.0}, {"x": 75.5, "y": 10.0}]
    rows = [
        {"image_url": ok, "image_sha256": sha(red), "points": pts, "count": 2,
         "label": "cat", "collection_method": "pointing"},
        {"image_url": busy, "image_sha256": sha(green), "points": [], "count": 0,
         "label": "dog", "collection_method": "counting"},
        {"image_url": missing, "image_sha256": sha(gone), "points": pts, "count": 2,
         "label": "bird", "collection_method": "pointing"},
        {"image_url": ok, "image_sha256": sha(red), "points": [{"x": 150.0, "y": 5.0}],
         "count": 1, "label": "out of frame", "collection_method": "pointing"},
        {"image_url": slow, "image_sha256": sha(late), "points": pts[:1], "count": 1,
         "label": "car", "collection_method": "pointing"},
        {"image_url": trunc, "image_sha256": sha(good_trunc[: len(good_trunc) // 2]),
         "points": pts, "count": 2, "label": "tree", "collection_method": "pointing"},
        {"image_url": wrong, "image_sha256": sha(b"something else"), "points": pts, "count": 2,
         "label": "boat", "collection_method": "pointing"},
        {"image_url": copy, "image_sha256": sha(red), "points": pts[1:], "count": 1,
         "label": "hat", "collection_method": "pointing"},
        {"image_url": ok, "image_sha256": "not-a-hash", "points": pts, "count": 2,
         "label": "cup", "collection_method": "pointing"},
    ]
    parquet = write_parquet(tmp_path / "points.parquet", "pixmo-points", rows)
    out = tmp_path / "out"

    report = import_release("pixmo-points", [parquet], out, config=CONFIG)

    assert report.rows_read == 9
    assert report.images == 7  # distinct URLs among readable rows
    assert report.images_ok == 3  # red (2 URLs) and green after its 429
    assert report.images_downloaded == 5  # red, copy, green, blue (wrong hash), truncated
    assert report.images_failed == {"download_failed": 2, "image_sha256_mismatch": 1,
                                    "image_unreadable": 1}
    assert report.rows_rejected_by_reason == {
        "download_failed": 2, "image_sha256_mismatch": 1, "image_unreadable": 1,
        "invalid_record": 1, "out_of_bounds": 1}
    assert report.samples == 2 and report.rows_in_samples == 3 and report.rows_rejected == 6
    assert server.hits["/busy.jpg"] == 2
    assert server.hits["/slow.jpg"] == FETCH.retries + 1
    assert server.hits["/gone.jpg"] == 1  # a 404 is final within a run
    assert_ledger_closes(out, 9, parquet)

    samples = {s.key: s.json for s in iter_samples(out)}
    red_sample = samples[sample_key(sha(red))]
    assert red_sample["image"] == {"sha256": sha(red), "width": 64, "height": 48,
                                   "format": "jpeg", "bytes": len(red), "source": ok}
    assert red_sample["points"] == [
        {"label": "cat", "points": [[25.0, 50.0], [75.5, 10.0]], "count": 2,
         "collection_method": "pointing", "annotators": []},
        {"label": "hat", "points": [[75.5, 10.0]], "count": 1,
         "collection_method": "pointing", "annotators": []}]
    assert red_sample["sources"] == [{"file": parquet, "record": "1"},
                                     {"file": parquet, "record": "8"}]
    green_sample = samples[sample_key(sha(green))]
    assert green_sample["points"][0]["points"] == []
    assert green_sample["points"][0]["collection_method"] == "counting"
    assert all("." not in key for key in samples)

    failures = {f["url"]: f for f in read_failures(out)}
    assert sorted(failures) == sorted([missing, slow, trunc, wrong])
    assert failures[missing]["status"] == 404 and failures[missing]["reason"] == "download_failed"
    assert "timed out" in failures[slow]["detail"]
    assert failures[trunc]["reason"] == "image_unreadable"
    assert failures[wrong]["reason"] == "image_sha256_mismatch"
    description = read_dataset_json(out / "dataset.json")
    assert description["engine"] == "import"
    assert description["ledger"][0]["read"] == 9 and description["ledger"][0]["rejected"] == 6
    assert description["rejects_by_reason"] == report.rows_rejected_by_reason
    assert description["yield"] == {"rows": 3 / 9, "images": 3 / 7}

    # the hosts recover; the failures are retried and cached images are not fetched again
    server.route("/gone.jpg", Reply(body=gone))
    server.route("/slow.jpg", Reply(body=late))
    server.route("/trunc.jpg", Reply(body=good_trunc))
    rows[5]["image_sha256"] = sha(good_trunc)
    write_parquet(tmp_path / "points.parquet", "pixmo-points", rows)
    hits_before = dict(server.hits)

    again = import_release("pixmo-points", [parquet], out, config=CONFIG)

    for path in ("/red.jpg", "/copy-of-red.jpg", "/busy.jpg"):
        assert server.hits[path] == hits_before[path]
    assert again.images_cached == 3 and again.images_downloaded == 4
    assert again.retried == 4 and again.recovered == 3
    assert again.images_ok == 6 and again.samples == 5
    assert again.images_failed == {"image_sha256_mismatch": 1}
    assert [f["url"] for f in read_failures(out)] == [wrong]
    assert_ledger_closes(out, 9, parquet)


def test_yield_is_stated_as_fractions_and_in_the_summary(tmp_path, server):
    red, green, blue = image_bytes((200, 0, 0)), image_bytes((0, 200, 0)), image_bytes((0, 0, 200))
    cut = image_bytes((9, 9, 9))[:300]
    pts = [{"x": 25.0, "y": 50.0}]
    outside = [{"x": 150.0, "y": 5.0}]
    red_url = server.route("/red.jpg", Reply(body=red))
    green_url = server.route("/green.jpg", Reply(body=green))
    blue_url = server.route("/blue.jpg", Reply(body=blue))
    gone_url = server.route("/gone.jpg", Reply(404))
    cut_url = server.route("/cut.jpg", Reply(body=cut))
    never_url = server.route("/never.jpg", Reply(body=red))

    def row(url, data, points, sha256=None):
        return {"image_url": url, "image_sha256": sha256 or sha(data), "points": points,
                "count": len(points), "label": "thing", "collection_method": "pointing"}

    rows = [
        row(red_url, red, pts), row(red_url, red, pts),  # kept, kept
        row(green_url, green, pts), row(green_url, green, outside),  # kept, out of bounds
        row(blue_url, blue, outside),  # fetched, but its only row is out of bounds
        row(gone_url, b"gone", pts),  # 404
        row(cut_url, cut, pts),  # unreadable
        row(never_url, red, pts, sha256="not-a-hash"),  # unreadable row: its URL is not named
    ]
    parquet = write_parquet(tmp_path / "points.parquet", "pixmo-points", rows)
    out = tmp_path / "out"

    report = import_release("pixmo-points", [parquet], out, config=CONFIG)

    # rows: 8 read, 3 in samples; images: red, green, blue, gone and cut named, red and green kept
    assert (report.rows_read, report.rows_in_samples, report.images, report.images_ok) == (
        8, 3, 5, 2)
    assert server.hits.get("/never.jpg", 0) == 0
    assert read_dataset_json(out / "dataset.json")["yield"] == {"rows": 3 / 8, "images": 2 / 5}
    assert report.yields() == {"rows": 0.375, "images": 0.4}
    lines = report.lines()
    assert lines[0] == "pixmo-points: rows kept 3/8 (37.5%), 5 rejected"
    assert lines[1].startswith("images kept 2/5 (40.0%): 4 downloaded, 0 from cache, 1 unused")
    assert verify(out) == []


def test_count_pixels_become_percent_of_the_displayed_image_and_stale_hashes_are_flagged(
        tmp_path, server):
    plain = image_bytes((1, 2, 3), size=(200, 100))
    rotated = image_bytes((4, 5, 6), size=(40, 20), orientation=6)  # displayed 20 x 40
    a = server.route("/a.jpg", Reply(body=plain))
    b = server.route("/b.jpg", Reply(body=rotated))
    rows = [
        {"image_url": a, "image_sha256": sha(plain), "count": 2,
         "points": {"x": [50.0, 150.0], "y": [25.0, 75.0]}, "label": "apple"},
        # a stale hash (hosts re-encode): kept and flagged
        {"image_url": b, "image_sha256": sha(b"stale"), "count": 1,
         "points": {"x": [10.0], "y": [30.0]}, "label": "pear"},
        # eval splits: no points, only the count
        {"image_url": a, "image_sha256": sha(plain), "count": 3, "points": None, "label": "plum"},
        {"image_url": a, "image_sha256": sha(plain), "count": 1,
         "points": {"x": [500.0], "y": [10.0]}, "label": "far off"},
    ]
    parquet = write_parquet(tmp_path / "count.parquet", "pixmo-count", rows)
    out = tmp_path / "out"
    report = import_release("pixmo-count", [parquet], out, config=CONFIG)
    assert report.samples == 2 and report.sha256_flagged == 1
    assert report.rows_rejected_by_reason == {"out_of_bounds": 1}
    samples = {s.key: s.json for s in iter_samples(out)}
    first = samples[sample_key(sha(plain))]
    assert first["points"][0]["points"] == [[25.0, 25.0], [75.0, 75.0]]
    assert first["points"][0]["collection_method"] == "counting"
    assert first["points"][1] == {"label": "plum", "points": [], "count": 3,
                                  "collection_method": "counting", "annotators": []}
    assert "sha256_flagged" not in first["image"]
    second = samples[sample_key(sha(rotated))]
    assert second["image"]["sha256_flagged"] is True
    assert second["image"]["exif_orientation"] == 6
    assert (second["image"]["width"], second["image"]["height"]) == (20, 40)
    assert second["points"][0]["points"] == [[50.0, 75.0]]
    assert_ledger_closes(out, 4, parquet)


def test_count_strict_policy_override_rejects_stale_hashes(tmp_path, server):
    data = image_bytes((7, 7, 7))
    url = server.route("/c.jpg", Reply(body=data))
    rows = [{"image_url": url, "image_sha256": sha(b"stale"), "count": 1,
             "points": {"x": [1.0], "y": [1.0]}, "label": "x"}]
    parquet = write_parquet(tmp_path / "count.parquet", "pixmo-count", rows)
    report = import_release("pixmo-count", [parquet], tmp_path / "out",
                            config=ImportConfig(fetch=FETCH, sha256_policy="strict"))
    assert report.samples == 0
    assert report.rows_rejected_by_reason == {"image_sha256_mismatch": 1}


def test_cap_rows_group_by_image_and_have_no_hash_check(tmp_path, server):
    first, second = image_bytes((30, 60, 90), fmt="PNG"), image_bytes((90, 60, 30))
    a = server.route("/a.png", Reply(body=first))
    b = server.route("/b.jpg", Reply(body=second))
    rows = [
        {"image_url": a, "caption": "A blue square.", "transcripts": ["uh a blue", "square"]},
        {"image_url": b, "caption": "An orange square.", "transcripts": ["orange"]},
        {"image_url": a, "caption": "Another caption of the blue square.", "transcripts": []},
        {"image_url": b, "caption": "   ", "transcripts": ["blank caption"]},
    ]
    parquet = write_parquet(tmp_path / "cap.parquet", "pixmo-cap", rows)
    out = tmp_path / "out"
    report = import_release("pixmo-cap", [parquet], out, config=CONFIG)
    assert report.samples == 2
    assert report.rows_rejected_by_reason == {"invalid_record": 1}
    samples = {s.key: s for s in iter_samples(out)}
    blue = samples[sample_key(sha(first))]
    assert blue.json["captions"] == [
        {"text": "A blue square.", "method": "released"},
        {"text": "Another caption of the blue square.", "method": "released"}]
    assert blue.json["image"]["format"] == "png" and blue.files["png"] == first
    # sorted as a build sorts them (``build_sample``)
    assert [t["text"] for t in blue.json["transcripts"]] == ["square", "uh a blue"]
    assert all(t["backend"] == "released" for t in blue.json["transcripts"])
    assert_ledger_closes(out, 4, parquet)


def test_ask_model_anything_keeps_every_qa_and_rejects_hash_mismatches(tmp_path, server):
    data, other = image_bytes((5, 50, 5)), image_bytes((50, 5, 5))
    a = server.route("/a.jpg", Reply(body=data))
    b = server.route("/b.jpg", Reply(body=other))
    rows = [
        {"image_url": a, "image_sha256": sha(data), "question": "What colour?",
         "answer": "Green."},
        {"image_url": a, "image_sha256": sha(data), "question": "Shape?", "answer": "A square."},
        {"image_url": b, "image_sha256": sha(data), "question": "Colour?", "answer": "Red."},
    ]
    parquet = write_parquet(tmp_path / "ama.parquet", "pixmo-ask-model-anything", rows)
    out = tmp_path / "out"
    report = import_release("pixmo-ask-model-anything", [parquet], out, config=CONFIG)
    assert report.samples == 1 and report.images_failed == {"image_sha256_mismatch": 1}
    (sample,) = iter_samples(out)
    assert sample.json["qa"] == [
        {"question": "What colour?", "answer": "Green.", "source": "pixmo-ask-model-anything"},
        {"question": "Shape?", "answer": "A square.", "source": "pixmo-ask-model-anything"}]
    (reject,) = read_rejects(out / "rejects.parquet")
    assert reject["record"] == "3" and reject["reason"] == "image_sha256_mismatch"
    assert f"bytes hash to {sha(other)}" in reject["detail"]
    assert_ledger_closes(out, 3, parquet)


def test_docs_images_come_from_the_parquet_without_network(tmp_path):
    chart, table = image_bytes((1, 1, 1), fmt="PNG"), image_bytes((2, 2, 2), fmt="PNG")
    qa = [{"question": "What is the maximum?", "answer": "42"},
          {"question": "Title?", "answer": "Sales"}]
    rows = [
        {"image": {"bytes": chart, "path": None}, "image_id": "chart-1", "questions": qa},
        {"image": {"bytes": table, "path": None}, "image_id": "table-7", "questions": qa[:1]},
        {"image": {"bytes": chart, "path": None}, "image_id": "chart-1-dup", "questions": qa[1:]},
        {"image": {"bytes": b"\x89PNG broken", "path": None}, "image_id": "bad",
         "questions": qa},
        {"image": None, "image_id": "none", "questions": qa},
    ]
    parquet = write_parquet(tmp_path / "docs.parquet", "pixmo-docs", rows)
    out = tmp_path / "out"
    report = import_release("pixmo-docs", [parquet], out, config=CONFIG)
    assert report.images_downloaded == 0 and report.images_cached == 0
    assert report.samples == 2 and report.images_ok == 2
    assert report.rows_rejected_by_reason == {"image_unreadable": 1, "invalid_record": 1}
    samples = {s.key: s.json for s in iter_samples(out)}
    merged = samples[sample_key(sha(chart))]
    assert merged["image"]["source"] == "docs.parquet#chart-1"
    assert [q["question"] for q in merged["qa"]] == ["What is the maximum?", "Title?", "Title?"]
    assert {q["source"] for q in merged["qa"]} == {"pixmo-docs"}
    assert (out / FAILURES).read_text() == ""
    assert_ledger_closes(out, 5, parquet)


def test_cap_qa_messages_become_question_answer_pairs(tmp_path, server):
    data = image_bytes((3, 3, 3))
    url = server.route("/q.jpg", Reply(body=data))
    rows = [
        {"image_url": url, "question": "ignored", "answer": "ignored",
         "messages": ["Q1?", "A1.", "Q2?", "A2."]},
        {"image_url": url, "question": "Old Q?", "answer": "Old A.", "messages": None},
        {"image_url": url, "question": "x", "answer": "y", "messages": ["dangling?"]},
    ]
    parquet = write_parquet(tmp_path / "capqa.parquet", "pixmo-cap-qa", rows)
    out = tmp_path / "out"
    report = import_release("pixmo-cap-qa", [parquet], out, config=CONFIG)
    (sample,) = iter_samples(out)
    assert [(q["question"], q["answer"]) for q in sample.json["qa"]] == [
        ("Q1?", "A1."), ("Q2?", "A2."), ("Old Q?", "Old A.")]
    assert report.rows_rejected_by_reason == {"invalid_record": 1}
    assert_ledger_closes(out, 3, parquet)


def test_point_explanations_and_points_eval(tmp_path, server):
    data = image_bytes((8, 8, 8), size=(50, 50))
    url = server.route("/e.jpg", Reply(body=data))
    explained = [
        {"image_url": url, "image_sha256": sha(data), "question": "Where are the cups?",
         "response": 'Two <points x1="10.0" y1="20.0" x2="30.0" y2="40.0" alt="cups">'
                     'cups</points>.',
         "parsed_response": "Two <|POINT|>.", "alt_text": ["cups"], "inline_text": ["cups"],
         "points": [[{"x": 10.0, "y": 20.0}, {"x": 30.0, "y": 40.0}]]},
        {"image_url": url, "image_sha256": sha(data), "question": "Any?", "response": "No.",
         "parsed_response": None, "alt_text": [], "inline_text": [], "points": []},
    ]
    parquet = write_parquet(tmp_path / "pe.parquet", "pixmo-point-explanations", explained)
    out = tmp_path / "pe"
    report = import_release("pixmo-point-explanations", [parquet], out, config=CONFIG)
    (sample,) = iter_samples(out)
    assert sample.json["qa"][0]["answer"].startswith("Two <points")
    assert sample.json["points"] == [{"label": "cups", "points": [[10.0, 20.0], [30.0, 40.0]],
                                      "count": 2, "collection_method": "pointing",
                                      "annotators": []}]
    assert report.rows_rejected_by_reason == {"invalid_record": 1}
    assert_ledger_closes(out, 2, parquet)

    # 50 x 50 image: one mask per point, random shapes, survive the import exactly
    rng = np.random.default_rng(5)
    masks = [rng.random((50, 50)) < 0.3, rng.random((50, 50)) < 0.7]
    evaluation = [{"image_url": url, "image_sha256": sha(data), "label": "cup",
                   "points": [{"x": 79.87, "y": 71.57}, {"x": 10.0, "y": 20.0}],
                   "masks": [m.tolist() for m in masks]},
                  {"image_url": url, "image_sha256": sha(data), "label": "unicorn",
                   "points": [], "masks": []},
                  {"image_url": url, "image_sha256": sha(data), "label": "bad mask",
                   "points": [{"x": 1.0, "y": 1.0}], "masks": [[[True, False]]]}]
    parquet = write_parquet(tmp_path / "eval.parquet", "pixmo-points-eval", evaluation)
    report = import_release("pixmo-points-eval", [parquet], tmp_path / "eval", config=CONFIG)
    assert report.rows_rejected_by_reason == {"invalid_record": 1}
    (sample,) = iter_samples(tmp_path / "eval")
    cup, unicorn = sample.json["points"]
    assert cup["points"] == [[79.87, 71.57], [10.0, 20.0]] and cup["count"] == 2
    assert len(cup["masks"]) == 2
    for stored, mask in zip(cup["masks"], masks, strict=True):
        assert np.array_equal(decode_mask(stored), mask)
    assert unicorn == {"label": "unicorn", "points": [], "count": 0, "masks": [],
                       "collection_method": "pointing", "annotators": []}
    assert_ledger_closes(tmp_path / "eval", 3, parquet)  # verify checks the sample schema
    assert server.hits["/e.jpg"] == 2  # separate output dirs keep separate caches


def test_countbenchqa_imports_embedded_images_with_their_counts(tmp_path):
    dogs, cats = image_bytes((9, 9, 9), fmt="PNG"), image_bytes((1, 50, 1))
    rows = [{"image": {"bytes": dogs, "path": None}, "text": "dogs", "number": 4,
             "question": "How many dogs are in the image?"},
            {"image": {"bytes": cats, "path": None}, "text": "cats", "number": 7,
             "question": "How many cats are there?"},
            {"image": None, "text": "none", "number": 2, "question": "How many?"}]
    parquet = write_parquet(tmp_path / "test-00000-of-00001.parquet", "countbenchqa", rows)
    out = tmp_path / "out"
    report = import_release("countbenchqa", [parquet], out, config=CONFIG)
    assert report.samples == 2 and report.rows_rejected_by_reason == {"invalid_record": 1}
    samples = {s.key: s for s in iter_samples(out)}
    first = samples[sample_key(sha(dogs))]
    assert first.json["qa"] == [{"question": "How many dogs are in the image?", "answer": "4",
                                 "source": "countbenchqa"}]
    assert first.json["image"]["source"] == "test-00000-of-00001.parquet#1"
    assert first.files["png"] == dogs
    assert_ledger_closes(out, 3, parquet)


def test_a_file_of_another_subset_is_a_user_error(tmp_path):
    parquet = write_parquet(tmp_path / "cap.parquet", "pixmo-cap",
                            [{"image_url": "http://127.0.0.1:9/x.jpg", "caption": "c",
                              "transcripts": []}])
    with pytest.raises(PixmoError, match=r"missing released column\(s\) \['image_sha256'"):
        import_release("pixmo-ask-model-anything", [parquet], tmp_path / "out")
    with pytest.raises(PixmoError, match="unknown subset 'pixmo-clocks'"):
        import_release("pixmo-clocks", [parquet], tmp_path / "out")
    with pytest.raises(PixmoError, match="no parquet files given"):
        import_release("pixmo-cap", [], tmp_path / "out")


def test_import_config_checks_its_fields():
    with pytest.raises(ValueError, match="ImportConfig.sha256_policy must be one of"):
        ImportConfig(sha256_policy="loose")
    with pytest.raises(ValueError, match="ImportConfig.workers must be >= 1"):
        ImportConfig(workers=0)


def test_failure_ledger_is_jsonl(tmp_path, server):
    url = server.route("/x.jpg", Reply(500))
    parquet = write_parquet(tmp_path / "cap.parquet", "pixmo-cap",
                            [{"image_url": url, "caption": "c", "transcripts": []}])
    import_release("pixmo-cap", [parquet], tmp_path / "out", config=CONFIG)
    (line,) = (tmp_path / "out" / FAILURES).read_text().splitlines()
    assert json.loads(line) == {"url": url, "reason": "download_failed",
                                "detail": "HTTP 500 Internal Server Error", "status": 500,
                                "rows": 1}


def test_a_rerun_with_fewer_samples_leaves_no_stale_shard(tmp_path, server):
    one, two = image_bytes((1, 100, 1)), image_bytes((100, 1, 1))
    a = server.route("/1.jpg", Reply(body=one))
    b = server.route("/2.jpg", Reply(body=two))
    parquet = write_parquet(tmp_path / "cap.parquet", "pixmo-cap",
                            [{"image_url": a, "caption": "one", "transcripts": []},
                             {"image_url": b, "caption": "two", "transcripts": []}])
    out = tmp_path / "out"
    config = ImportConfig(fetch=FETCH, shards=ShardConfig(max_samples=1))
    assert import_release("pixmo-cap", [parquet], out, config=config).samples == 2
    assert len(list((out / "shards").glob("*.tar"))) == 2
    server.route("/2.jpg", Reply(404))
    shutil.rmtree(out / "image_cache")
    report = import_release("pixmo-cap", [parquet], out, config=config)
    assert report.samples == 1 and report.images_downloaded == 1
    assert [p.name for p in (out / "shards").glob("*.tar")] == ["pixmo-000000.tar"]
    assert_ledger_closes(out, 2, parquet)


def test_cached_bytes_that_stop_passing_are_dropped_and_fetched_again(tmp_path, server):
    data = image_bytes((9, 90, 9))
    url = server.route("/a.jpg", Reply(body=data))
    row = {"image_url": url, "image_sha256": sha(data), "question": "Q?", "answer": "A."}
    parquet = tmp_path / "ama.parquet"
    out = tmp_path / "out"
    cache = out / "image_cache"
    write_parquet(parquet, "pixmo-ask-model-anything", [row])
    assert import_release("pixmo-ask-model-anything", [parquet], out, config=CONFIG).samples == 1
    assert len(list(cache.rglob("*"))) == 2  # one folder, one cached image
    write_parquet(parquet, "pixmo-ask-model-anything", [{**row, "image_sha256": sha(b"new")}])
    report = import_release("pixmo-ask-model-anything", [parquet], out, config=CONFIG)
    assert report.images_cached == 1 and report.samples == 0
    assert not [p for p in cache.rglob("*") if p.is_file()]
    write_parquet(parquet, "pixmo-ask-model-anything", [row])
    report = import_release("pixmo-ask-model-anything", [parquet], out, config=CONFIG)
    assert report.images_downloaded == 1 and report.samples == 1 and report.recovered == 1
    assert server.hits["/a.jpg"] == 2


def test_a_parquet_cannot_make_the_importer_read_local_files(tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(image_bytes((1, 1, 1)))
    parquet = write_parquet(tmp_path / "cap.parquet", "pixmo-cap",
                            [{"image_url": f"file://{secret}", "caption": "c", "transcripts": []},
                             {"image_url": str(secret), "caption": "c", "transcripts": []}])
    out = tmp_path / "out"
    report = import_release("pixmo-cap", [parquet], out, config=CONFIG)
    assert report.samples == 0 and report.images_failed == {"download_failed": 2}
    details = sorted(r["detail"] for r in read_rejects(out / "rejects.parquet"))
    assert details == ["scheme '' is not fetched; use one of ['http', 'https']",
                       "scheme 'file' is not fetched; use one of ['http', 'https']"]


def test_cli_import_prints_the_yield_report(tmp_path, capsys):
    from pipelines.cli import main

    rows = [{"image": {"bytes": image_bytes((3, 3, 3), fmt="PNG"), "path": None},
             "image_id": "c", "questions": [{"question": "Max?", "answer": "1"}]},
            {"image": None, "image_id": "none", "questions": []}]
    parquet = write_parquet(tmp_path / "docs.parquet", "pixmo-docs", rows)
    assert main(["import", "pixmo-docs", "--parquet", str(parquet), "--out",
                 str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "pixmo-docs: rows kept 1/2 (50.0%), 1 rejected" in out
    assert "images kept 1/1 (100.0%)" in out
    assert "invalid_record: 1" in out
    assert read_dataset_json(tmp_path / "out" / "dataset.json")["yield"] == {"rows": 0.5,
                                                                             "images": 1.0}
    assert main(["validate", str(tmp_path / "out")]) == 0


def test_an_import_makes_its_samples_as_a_build_does(tmp_path, server):
    """One key scheme and one builder: the same bytes get the build's key, and the
    imported sample is ``build_sample`` of the same annotations, byte for byte."""
    data = image_bytes((5, 6, 7))
    url = server.route("/same.jpg", Reply(body=data))
    point_sets = [{"label": "zebra", "points": [[10.0, 20.0]], "count": 1,
                   "collection_method": "pointing", "annotators": []},
                  {"label": "apple", "points": [], "count": 0,
                   "collection_method": "counting", "annotators": []}]
    rows = [{"image_url": url, "image_sha256": sha(data), "label": p["label"],
             "points": [{"x": x, "y": y} for x, y in p["points"]], "count": p["count"],
             "collection_method": p["collection_method"]} for p in point_sets]
    parquet = write_parquet(tmp_path / "points.parquet", "pixmo-points", rows)
    import_release("pixmo-points", [parquet], tmp_path / "out", config=CONFIG)
    (imported,) = iter_samples(tmp_path / "out")

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "same.jpg").write_bytes(data)
    built = join_image([decode_image(data, "same.jpg")], [], BuildConfig(str(tmp_path / "raw")))
    assert imported.key == built.key == sample_key(sha(data)) and len(imported.key) == 24

    expected = build_sample(ImageAnnotations(
        decode_image(data, url), points=point_sets,
        sources=[(parquet, "2"), (parquet, "1")]))
    assert json_bytes(imported.json) == json_bytes(expected.json)
    assert [p["label"] for p in imported.json["points"]] == ["apple", "zebra"]
    assert imported.files == expected.files == {"jpg": data}
