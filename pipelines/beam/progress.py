"""Live progress of a build: how many records, images, samples and shards
each stage has done so far.

Stages call ``advance`` as they go. While a ``Progress`` is showing, a thread
draws one bar per stage on a terminal (tqdm) or, when the stream is not a
terminal, writes one line every ``interval`` seconds. ``advance`` reaches the
display through this module, not through an argument: Beam pickles its DoFns,
and its local runner runs them in the driver's process, where the module is
the same object. Runners that run stages in other processes (Dataflow,
Flink, the local multi-processing mode) report nothing here; their own UIs
show progress.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

_lock = threading.Lock()
_active: Progress | None = None


@dataclass
class _Count:
    done: int = 0
    total: int | None = None


def advance(stage: str, n: int = 1) -> None:
    """Count ``n`` more items done by ``stage`` (nothing if no display is showing)."""
    progress = _active
    if progress is not None:
        with _lock:
            progress.counts[stage].done += n


def set_total(stage: str, total: int) -> None:
    """How many items ``stage`` will do, once that is known."""
    progress = _active
    if progress is not None:
        with _lock:
            progress.counts[stage].total = total


class Progress:
    """Shows the counts of ``stages`` (name, unit) while the block runs."""

    def __init__(self, stages: Sequence[tuple[str, str]], stream: TextIO | None = None,
                 interval: float = 10.0, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.units = dict(stages)
        self.counts = {name: _Count() for name in self.units}
        self.interval = interval
        self.tty = self.stream.isatty() if tty is None else tty
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pixmo-progress", daemon=True)
        self._start = 0.0
        self._bars: dict[str, Any] = {}

    def __enter__(self) -> Progress:
        global _active
        if _active is not None:
            raise RuntimeError("a build progress display is already showing")
        self._start = time.monotonic()
        _active = self
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        global _active
        self._stop.set()
        self._thread.join()
        _active = None
        self._render(final=True)
        for bar in self._bars.values():
            bar.close()

    def _run(self) -> None:
        while not self._stop.wait(0.2 if self.tty else self.interval):
            self._render(final=False)

    def _snapshot(self) -> dict[str, _Count]:
        with _lock:
            return {name: _Count(c.done, c.total) for name, c in self.counts.items()}

    def _render(self, final: bool) -> None:
        counts = self._snapshot()
        if self.tty:
            self._draw_bars(counts)
        else:
            self.stream.write(self.line(counts, time.monotonic() - self._start, final) + "\n")
            self.stream.flush()

    def line(self, counts: dict[str, _Count], seconds: float, final: bool = False) -> str:
        """One line for logs: ``progress 12s: read 1,000 records | image 400 images | …``."""
        parts = []
        for name, c in counts.items():
            of = f"/{c.total:,}" if c.total is not None else ""
            parts.append(f"{name} {c.done:,}{of} {self.units[name]}")
        return f"{'done' if final else 'progress'} {seconds:.0f}s: " + " | ".join(parts)

    def _draw_bars(self, counts: dict[str, _Count]) -> None:
        from tqdm import tqdm

        for position, (name, c) in enumerate(counts.items()):
            bar = self._bars.get(name)
            if bar is None:
                bar = self._bars[name] = tqdm(desc=f"{name:8s}", unit=f" {self.units[name]}",
                                              position=position, file=self.stream,
                                              dynamic_ncols=True, leave=True)
            if c.total is not None and bar.total != c.total:
                bar.total = c.total
                bar.refresh()
            bar.update(c.done - bar.n)
