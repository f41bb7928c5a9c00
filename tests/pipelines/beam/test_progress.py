"""Build progress: one line per interval off a terminal, bars on one, and the
counts a real Beam build reports while it runs."""

from __future__ import annotations

import io
import re
import threading

import pytest

from pipelines.beam import progress
from pipelines.beam.progress import Progress
from pipelines.cli import main
from tests.pipelines.conftest import make_raw

STAGES = (("read", "records"), ("write", "shards"))
WAIT_S = 60.0  # a generous bound on waits for the display thread; it fails the test, never paces it


class Watched(io.StringIO):
    """A stream that sets ``seen`` once a write contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, threading.Event()

    def write(self, s: str) -> int:
        n = super().write(s)
        if self.text in s:
            self.seen.set()
        return n


def test_lines_while_running_then_a_final_line():
    stream = Watched("read 1,200 records")
    with Progress(STAGES, stream=stream, interval=0.01, tty=False):
        progress.advance("read", 1200)
        assert stream.seen.wait(WAIT_S), "no progress line while the block ran"
        progress.set_total("write", 3)
        progress.advance("write")
    lines = stream.getvalue().splitlines()
    assert any(re.fullmatch(r"progress \d+s: read 1,200 records \| write 0 shards", line)
               for line in lines)
    assert re.fullmatch(r"done \d+s: read 1,200 records \| write 1/3 shards", lines[-1])
    progress.advance("read")  # no display showing: counted nowhere, no error


def test_bars_on_a_terminal():
    stream = io.StringIO()
    with Progress(STAGES, stream=stream, tty=True):
        progress.set_total("write", 4)
        progress.advance("write", 4)
        progress.advance("read", 7)
    drawn = stream.getvalue()
    assert re.search(r"read\s*: 7 records", drawn)
    assert re.search(r"write\s*: 100%.*4/4", drawn)


def test_one_display_at_a_time():
    with Progress(STAGES, stream=io.StringIO(), tty=False):
        with pytest.raises(RuntimeError, match="already showing"):
            Progress(STAGES, stream=io.StringIO(), tty=False).__enter__()


def test_build_reports_every_stage_while_it_runs(tmp_path, capsys, monkeypatch):
    """The Beam build's DoFns count into the display as they go: every call of
    ``advance`` finds the display showing and its count moves from zero to the
    end; the first call waits for a periodic line, so one is written while the
    build runs however fast it is; the last line has every count."""
    raw = make_raw(tmp_path / "raw")
    calls: list[tuple[str, int, int]] = []  # stage, count before, count after
    periodic = threading.Event()
    real_advance, real_line, real_enter = progress.advance, Progress.line, Progress.__enter__
    shown: list[Progress] = []  # the display the command line shows

    def enter(self) -> Progress:
        shown.append(self)
        return real_enter(self)

    def line(self, counts, seconds, final=False) -> str:
        if not final:
            periodic.set()
        return real_line(self, counts, seconds, final)

    def advance(stage: str, n: int = 1) -> None:
        assert shown, f"{stage} counted before a display was showing"
        active = shown[0]
        assert periodic.wait(WAIT_S), "no periodic progress line while the build ran"
        before = active.counts[stage].done
        real_advance(stage, n)
        calls.append((stage, before, active.counts[stage].done))

    monkeypatch.setattr(Progress, "line", line)
    monkeypatch.setattr(Progress, "__enter__", enter)
    monkeypatch.setattr(progress, "advance", advance)
    assert main(["build", "--raw", str(raw), "--out", str(tmp_path / "out"),
                 "--no-transcribe", "--progress-interval", "0.05"]) == 0
    reads = [(before, after) for stage, before, after in calls if stage == "read"]
    assert reads[0][0] == 0 and reads[-1][1] == 17  # counted from zero to the end
    # each call starts where the last one ended: nothing counted the reads elsewhere
    assert [after for _, after in reads[:-1]] == [before for before, _ in reads[1:]]
    assert {stage for stage, *_ in calls} == {"read", "image", "annotate", "join", "write"}
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("done ")
    # 17 records; 6 images named, 4 of them readable; 11 records reach the annotator
    # (one more names its image with the wrong sha256); c.png gets no sample
    assert lines[-1].endswith("read 17 records | image 6 images | annotate 11 records | "
                              "join 2 samples | write 1/1 shards")
    assert any(line.startswith("progress ") for line in lines)
