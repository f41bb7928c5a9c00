"""Whisper inside a build against ``pixmo transcribe`` on the same clips, in one run.

Synthesizes spoken descriptions (eSpeak NG, one per image, as ``pixmo synth``
makes them; or takes the caption sessions of ``--raw``), keeps only the
caption sessions in a raw folder, then, for each worker count W, in
alternating rounds:

1. standalone: W processes run ``pixmo transcribe``'s code path
   (``transcribe_files``) at the same time, on the clips dealt round-robin;
   each loads its model first, then times every clip (read, decode,
   transcribe, QC);
2. build: ``pixmo build --workers W`` on the raw folder holding those clips;
   its annotate stage's seconds (dataset.json ``stage_seconds``) are the same
   per-clip seconds, added up across its workers.

RTF = those seconds / seconds of decoded audio; the ratio is build over
standalone, best round of each. On a machine that others share, ``--together``
starts each build at the same moment as its standalone processes, so that
their load hits both alike.
The speech settings are the demo's (tiny.en, beam 5, one thread per model,
``--min-speech-s 5``), and every transcript of the build must equal the
standalone one (``annotator`` and ``session_id`` aside).

    .venv/bin/python benchmarks/annotate.py [--clips 64] [--workers 1 2] [--rounds 2]
                                            [--raw DIR] [--together]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MIN_SPEECH_S = "5"  # the demo's; synthetic descriptions last 10-18 s
IGNORED = ("annotator", "session_id")  # what a build adds to a transcript from its record


def speech_config() -> Any:
    from pixmo.speech.config import QCConfig, SpeechConfig

    return SpeechConfig(cpu_threads=1, qc=QCConfig(min_speech_s=float(MIN_SPEECH_S)))


def captions_only(src: Path, dst: Path, limit: int | None = None) -> list[Path]:
    """A raw folder at ``dst`` with ``src``'s first ``limit`` caption sessions
    and the files they name; the audio paths in record order."""
    dst.mkdir(parents=True)
    lines = (src / "captions.jsonl").read_text().splitlines()[:limit]
    audio = []
    for line in lines:
        record = json.loads(line)
        for key in ("image", "audio"):
            if (src / record[key]).is_file() and not (dst / record[key]).exists():
                (dst / record[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / record[key], dst / record[key])
        audio.append(dst / record["audio"])
    (dst / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return audio


def make_raw(root: Path, clips: int, seed: int) -> list[Path]:
    """``clips`` images, each described by one speaker; no points, no bad records."""
    from pixmo.synth.config import SynthConfig
    from pixmo.synth.raw import synthesize

    synthesize(root / "synth", scenes=clips, seed=seed, config=SynthConfig(
        speech_share=1.0, multi_speaker_share=0.0, bad_records=False))
    return captions_only(root / "synth", root / "raw")


def child(paths: list[str]) -> None:
    """One ``pixmo transcribe`` process: its model loaded (once per process,
    ``load_backend``), then every clip timed as ``transcribe_files`` yields it."""
    from pixmo.speech.backends import load_backend
    from pixmo.speech.transcribe import transcribe_files

    cfg = speech_config()
    start = time.perf_counter()
    load_backend(cfg)
    out: dict[str, Any] = {"load": time.perf_counter() - start, "clips": []}
    rows = transcribe_files(paths, cfg)
    while True:
        start = time.perf_counter()
        row = next(rows, None)
        if row is None:
            break
        out["clips"].append({"seconds": time.perf_counter() - start,
                             "duration_s": (row["audio"] or {}).get("duration_s", 0.0),
                             "transcript": row.get("transcript")})
    print(json.dumps(out))


def _without(transcript: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in transcript.items() if k not in IGNORED}


def start_standalone(paths: list[Path], workers: int) -> list[subprocess.Popen[str]]:
    """W ``child`` processes at once on the clips dealt round-robin."""
    return [subprocess.Popen([sys.executable, __file__, "--child", *map(str, paths[i::workers])],
                             stdout=subprocess.PIPE, text=True) for i in range(workers)]


def finish_standalone(procs: list[subprocess.Popen[str]]) -> dict[str, Any]:
    outs = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"transcribe child failed ({proc.returncode})")
        outs.append(json.loads(stdout.splitlines()[-1]))
    clips = [c for o in outs for c in o["clips"]]
    return {"seconds": sum(c["seconds"] for c in clips),
            "audio_s": sum(c["duration_s"] for c in clips),
            "load": max(o["load"] for o in outs),
            "transcripts": {c["transcript"]["audio_sha256"]: _without(c["transcript"])
                            for c in clips if c["transcript"]}}


def start_build(raw: Path, out: Path, workers: int) -> tuple[subprocess.Popen[bytes], float]:
    """``pixmo build --workers W``, its output to ``out``.log."""
    shutil.rmtree(out, ignore_errors=True)
    argv = ["build", "--raw", str(raw), "--out", str(out), "--workers", str(workers),
            "--min-speech-s", MIN_SPEECH_S]
    with open(f"{out}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from pipelines.cli import "
                                 f"main; sys.exit(main({argv!r}))"], stdout=log, stderr=log)
    return proc, time.perf_counter()


def finish_build(started: tuple[subprocess.Popen[bytes], float], out: Path) -> dict[str, Any]:
    """The build's annotate seconds, wall seconds and transcripts."""
    from pixmo.dataset.reader import iter_samples

    proc, start = started
    if proc.wait():
        raise SystemExit(f"build failed ({proc.returncode}): see {out}.log")
    wall = time.perf_counter() - start
    stages = json.loads((out / "dataset.json").read_text())["stage_seconds"]
    transcripts = {t["audio_sha256"]: _without(t)
                   for s in iter_samples(out) for t in s.json.get("transcripts", ())}
    return {"seconds": stages["annotate"], "wall": wall, "transcripts": transcripts}


def measure(paths: list[Path], raw: Path, out: Path, workers: int, together: bool
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Standalone then build, or both at once (``together``: the same load on both)."""
    if together:
        procs, build = start_standalone(paths, workers), start_build(raw, out, workers)
        return finish_standalone(procs), finish_build(build, out)
    alone = finish_standalone(start_standalone(paths, workers))
    return alone, finish_build(start_build(raw, out, workers), out)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def compare(paths: list[Path], raw: Path, tmp: Path, workers: list[int], rounds: int,
            together: bool) -> None:
    """Alternating rounds of both measurements at each worker count; the best of each."""
    best: dict[tuple[str, int], float] = {}
    audio_s = 0.0
    for r in range(rounds):
        for w in workers:
            alone, built = measure(paths, raw, tmp / "out", w, together)
            if built["transcripts"] != alone["transcripts"]:
                raise SystemExit(f"workers {w}: the build's transcripts differ from "
                                 "pixmo transcribe's")
            audio_s = alone["audio_s"]
            for kind, seconds in (("transcribe", alone["seconds"]), ("build", built["seconds"])):
                best[kind, w] = min(best.get((kind, w), seconds), seconds)
            print(f"round {r + 1} workers {w}: transcribe RTF {alone['seconds'] / audio_s:.4f} "
                  f"(model load {alone['load']:.1f} s), build annotate RTF "
                  f"{built['seconds'] / audio_s:.4f} (build wall {built['wall']:.1f} s), "
                  f"{len(alone['transcripts'])} transcripts identical; load average "
                  f"{load_average()}", flush=True)
    print(f"\n{len(paths)} clips, {audio_s:.1f} s of audio; best of {rounds} rounds")
    print(f"{'workers':>7} {'transcribe RTF':>15} {'build annotate RTF':>19} {'ratio':>6}")
    for w in workers:
        t, b = best["transcribe", w] / audio_s, best["build", w] / audio_s
        print(f"{w:7} {t:15.4f} {b:19.4f} {b / t:6.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64,
                        help="spoken descriptions to make (with --raw: to take)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", type=Path, default=None,
                        help="take the caption sessions of this raw folder instead")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--together", action="store_true",
                        help="run each build at the same time as its standalone processes, "
                        "so that other load on a shared machine hits both alike")
    parser.add_argument("--child", nargs="*", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child)
        return
    print(f"{os.cpu_count()} CPUs, load average {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = (captions_only(args.raw, root / "raw", args.clips) if args.raw
                 else make_raw(root, args.clips, args.seed))
        compare(paths, root / "raw", root, args.workers, args.rounds, args.together)


if __name__ == "__main__":
    main()
