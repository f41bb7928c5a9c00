"""Durable collection files: a torn last line is cut off and reported on open, an append is
whole or absent, audio appears whole under the name given, and containers are told apart by
their first bytes."""

from __future__ import annotations

import json
import os

import pytest

from pixmo.collect.store import AudioFolder, RecordLog, audio_extension
from tests.paths import SPEECH


def test_records_are_appended_one_line_each(tmp_path):
    log = RecordLog(tmp_path / "r.jsonl")
    assert log.repair is None
    log.append({"b": 1, "a": "é"})
    log.append({"c": [1, 2]})
    log.close()
    assert (tmp_path / "r.jsonl").read_text(encoding="utf-8") == (
        '{"a": "é", "b": 1}\n{"c": [1, 2]}\n')
    assert list(RecordLog(tmp_path / "r.jsonl").records()) == [{"a": "é", "b": 1},
                                                                 {"c": [1, 2]}]


@pytest.mark.parametrize("tail", [b'{"a": 3', b"{", b'{"a": 3}'])
def test_a_torn_last_line_is_cut_off_and_reported(tmp_path, tail):
    path = tmp_path / "r.jsonl"
    whole = b'{"a": 1}\n{"a": 2}\n'
    path.write_bytes(whole + tail)
    log = RecordLog(path)
    assert (log.repair.dropped_bytes, log.repair.file) == (len(tail), str(path))
    assert "repaired a torn last line" in log.repair.line()
    assert path.read_bytes() == whole
    log.append({"a": 4})
    assert [r["a"] for r in log.records()] == [1, 2, 4]
    log.close()
    assert RecordLog(path).repair is None


def test_a_file_that_is_all_torn_line_is_emptied(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"half')
    assert RecordLog(path).repair.dropped_bytes == 6
    assert path.read_bytes() == b""


def test_a_failed_append_leaves_no_half_line(tmp_path, monkeypatch):
    log = RecordLog(tmp_path / "r.jsonl")
    log.append({"a": 1})
    real_write = os.write

    def half_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", half_write)
    with pytest.raises(OSError, match="short write"):
        log.append({"a": 2, "pad": "x" * 50})
    monkeypatch.setattr(os, "write", real_write)
    log.append({"a": 3})
    assert [json.loads(x)["a"] for x in (tmp_path / "r.jsonl").read_text().splitlines()] == [1, 3]


def test_audio_is_published_whole_and_leftovers_removed(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "c-1.ogg.123.partial").write_bytes(b"half")
    folder = AudioFolder(tmp_path / "audio")
    assert folder.write("c-1", b"OggS data", "ogg") == "audio/c-1.ogg"
    assert sorted(p.name for p in (tmp_path / "audio").iterdir()) == ["c-1.ogg"]
    assert (tmp_path / "audio/c-1.ogg").read_bytes() == b"OggS data"


def test_audio_containers_by_their_first_bytes():
    assert audio_extension((SPEECH / "kitchen.opus").read_bytes()) == "ogg"
    assert audio_extension((SPEECH / "desk.flac").read_bytes()) == "flac"
    assert audio_extension(b"RIFF\0\0\0\0WAVEfmt ") == "wav"
    assert audio_extension(b"\x1aE\xdf\xa3webm") == "webm"
    assert audio_extension(b"\0\0\0\x20ftypM4A ") == "m4a"
    assert audio_extension(b"ID3\x04") == "mp3"
    for data in (b"", b"RIFF\0\0\0\0AVI ", b"<html>", b"\x89PNG\r\n"):
        assert audio_extension(data) is None
