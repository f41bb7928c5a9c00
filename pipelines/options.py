"""What the parts of the ``pixmo`` command line share: an argparse type for numbers that go
to an engine as plain arguments, the Whisper options of ``transcribe`` and ``build``, and
the text tables and sizes the commands print."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence


def _number(kind: type[int] | type[float], least: float,
            strict: bool = False) -> Callable[[str], float]:
    """An argparse type for a flag that goes to an engine as a plain argument, not into a
    config that checks it: a finite ``kind`` >= ``least`` (> with ``strict``)."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value) or value < least or (strict and value == least):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {least}, "
                                             f"got {text}")
        return value
    return parse


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if c.replace(",", "").replace(".", "").isdigit() else c.ljust(w)
            for c, w in zip(row, widths, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


SPEECH_OPTIONS = {"QCConfig.min_speech_s": "--min-speech-s",
                  "SpeechConfig.cpu_threads": "--cpu-threads"}


def _add_speech_options(p: argparse.ArgumentParser, min_speech_help: str,
                        defaults: bool = True) -> None:
    """The Whisper options ``transcribe`` and ``build`` share (``SPEECH_OPTIONS``); without
    ``defaults`` an option not given is None (the config file's value or default then)."""
    p.add_argument("--device", default="auto" if defaults else None,
                   choices=("auto", "cpu", "cuda"))
    p.add_argument("--cpu-threads", type=int, default=1 if defaults else None,
                   help="threads of one Whisper model on CPU; recorded in each transcript "
                   "(more cores: more --workers)")
    p.add_argument("--min-speech-s", type=float, default=60.0 if defaults else None,
                   help=min_speech_help)
