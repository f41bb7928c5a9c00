"""Publishing files whole or not at all (``pixmo.atomic``): a write that fails leaves neither
the file nor a ``.partial``; a directory replaces the old one only when it is complete."""

from __future__ import annotations

import os

import pytest

from pixmo.atomic import (
    PARTIAL_SUFFIX,
    atomic_directory,
    atomic_open,
    atomic_write_bytes,
    partial_path,
    remove_partials,
)
from pixmo.errors import PixmoError


def test_partial_names_never_end_in_the_final_suffix(tmp_path):
    tmp = partial_path(tmp_path / "pixmo-000001.tar")
    assert tmp.parent == tmp_path
    assert tmp.name == f"pixmo-000001.tar.{os.getpid()}{PARTIAL_SUFFIX}"
    assert not tmp.name.endswith(".tar")


def test_a_write_appears_whole_in_a_new_folder(tmp_path):
    path = tmp_path / "new" / "a.json"
    with atomic_open(path) as fh:
        fh.write(b"{}")
        assert not path.exists()  # not before the block ends
    assert path.read_bytes() == b"{}"
    atomic_write_bytes(path, b"[1]")
    assert path.read_bytes() == b"[1]"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(path) as fh:
        fh.write(b"half")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_directory_replaces_the_old_one_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        (tmp / "x").write_text("1")
        assert not out.exists()
    assert (out / "x").read_text() == "1"
    with pytest.raises(PixmoError, match="exists and is not empty"):
        with atomic_directory(out):
            pass
    with pytest.raises(RuntimeError), atomic_directory(out, overwrite=True) as tmp:
        (tmp / "y").write_text("2")
        raise RuntimeError("killed")
    assert [p.name for p in out.iterdir()] == ["x"]
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "y").write_text("2")
    assert [p.name for p in out.iterdir()] == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left


def test_an_empty_directory_is_filled_without_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "x").write_text("1")
    assert (tmp_path / "out" / "x").is_file()


def test_remove_partials_removes_only_leftovers(tmp_path):
    (tmp_path / f"a.tar.12{PARTIAL_SUFFIX}").write_bytes(b"")
    (tmp_path / f".out.abc{PARTIAL_SUFFIX}").mkdir()
    (tmp_path / "a.tar").write_bytes(b"")
    removed = remove_partials(tmp_path)
    assert sorted(p.name for p in removed) == [f".out.abc{PARTIAL_SUFFIX}",
                                               f"a.tar.12{PARTIAL_SUFFIX}"]
    assert [p.name for p in tmp_path.iterdir()] == ["a.tar"]
