"""Transcription speed on the same clips in one run.

Prints, for the sample speech in tests/data/speech (or the clips given):
1. the real-time factor (processing seconds / audio seconds) of each installed
   backend on the bundled tiny.en, relative to faster-whisper int8;
2. faster-whisper int8 against float32 (and batched int8);
3. the overhead of ``pixmo.speech.transcribe.Transcriber`` (QC, records) over calling
   faster-whisper's ``WhisperModel.transcribe`` directly on the same loaded
   model with the same arguments. Goal: under 5 %;
4. the cost of deterministic transcripts: faster-whisper as the library sets
   itself up (its kernels, every core) against pinned kernels at every core and
   at one thread (the default), each in a fresh process, in alternating rounds.

    .venv/bin/python benchmarks/transcribe.py [--repeats 3] [--beam-size 5] [CLIP ...]

Each figure is the best of ``--repeats`` timed passes over all clips after one
warm-up pass; wrapper and direct passes alternate so that load from other
processes hits both alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from pixmo.speech.audio import Audio, read_audio
from pixmo.speech.config import QCConfig, SpeechConfig
from pixmo.speech.kernels import CT2_KERNELS
from pixmo.speech.transcribe import Transcriber

CLIPS = [Path(__file__).resolve().parents[1] / "tests" / "data" / "speech" / name
         for name in ("kitchen.opus", "street.opus", "garden.opus", "desk.flac")]
# accept every clip: the benchmark times the model, not the thresholds
LENIENT = QCConfig(min_speech_s=0.0, min_words=0, min_avg_logprob=-10.0,
                   max_compression_ratio=100.0, max_no_speech_prob=1.0)


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def rtf_of(cfg: SpeechConfig, clips: list[Audio], repeats: int) -> float:
    transcriber = Transcriber(cfg)
    seconds = sum(a.duration_s for a in clips)
    return best_time(lambda: [transcriber(a) for a in clips], repeats) / seconds


# part 4: how each process of the determinism comparison loads the model
SETUPS = {
    "library's choice (its kernels, all cores)": {"pinned": False, "threads": 0},
    "library's kernels, 1 thread": {"pinned": False, "threads": 1},
    f"pinned kernels, {os.cpu_count()} threads": {"pinned": True, "threads": os.cpu_count()},
    "pinned kernels, 1 thread (default)": {"pinned": True, "threads": 1},
}


def child_rtf(setup: dict, clips: list[Path], beam_size: int, repeats: int) -> float:
    """RTF of one fresh process: faster-whisper's own ``WhisperModel`` unpinned
    (what ``cpu_threads=0`` used to do), or the pinned backend."""
    if setup["pinned"]:
        cfg = SpeechConfig(beam_size=beam_size, device="cpu", cpu_threads=setup["threads"],
                           qc=LENIENT)
        return rtf_of(cfg, [read_audio(p) for p in clips], repeats)
    from faster_whisper import WhisperModel

    from pixmo.speech.weights import bundled_model_dir

    model = WhisperModel(str(bundled_model_dir()), device="cpu", compute_type="int8",
                         cpu_threads=setup["threads"], local_files_only=True)
    audio = [read_audio(p) for p in clips]

    def run() -> None:
        for a in audio:
            list(model.transcribe(a.samples, beam_size=beam_size, temperature=0.0)[0])

    return best_time(run, repeats) / sum(a.duration_s for a in audio)


def determinism_cost(args: argparse.Namespace) -> None:
    rounds = args.rounds
    # this process's backend pinned its own environment: children start without
    env = {k: v for k, v in os.environ.items() if k not in CT2_KERNELS}
    rtfs: dict[str, list[float]] = {name: [] for name in SETUPS}
    for _ in range(rounds):
        for name, setup in SETUPS.items():
            out = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(setup),
                 "--repeats", str(args.repeats), "--beam-size", str(args.beam_size),
                 *map(str, args.clips)], check=True, capture_output=True, text=True, env=env)
            rtfs[name].append(float(out.stdout.split()[-1]))
    baseline = min(rtfs[next(iter(SETUPS))])
    print(f"\ndeterminism: best of {rounds} fresh processes each")
    print(f"{'faster-whisper int8':42} {'RTF':>7} {'time vs library':>16}")
    for name, values in rtfs.items():
        print(f"{name:42} {min(values):7.3f} {min(values) / baseline:15.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="*", type=Path, default=CLIPS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--cpu-threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3,
                        help="part 4: fresh processes per setup, alternating")
    parser.add_argument("--only-determinism", action="store_true",
                        help="run part 4 alone")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(child_rtf(json.loads(args.child), args.clips, args.beam_size, args.repeats))
        return
    if args.only_determinism:
        determinism_cost(args)
        return

    clips = [read_audio(p) for p in args.clips]
    seconds = sum(a.duration_s for a in clips)
    base = SpeechConfig(beam_size=args.beam_size, cpu_threads=args.cpu_threads, qc=LENIENT)
    print(f"{len(clips)} clips, {seconds:.1f} s of audio, tiny.en, beam {args.beam_size}, "
          f"best of {args.repeats}")

    # 1 + 2: real-time factor per backend and compute type
    runs = [("faster-whisper int8", base),
            ("faster-whisper float32", replace(base, compute_type="float32")),
            ("faster-whisper int8 batched(8)", replace(base, batch_size=8))]
    if importlib.util.find_spec("whisper"):
        runs.append(("openai-whisper float32", replace(base, backend="openai-whisper")))
    if importlib.util.find_spec("transformers"):
        runs.append(("transformers float32", replace(base, backend="transformers")))
    baseline = None
    print(f"\n{'backend':34} {'RTF':>7} {'x realtime':>11} {'time vs fw int8':>16}")
    for name, cfg in runs:
        rtf = rtf_of(cfg, clips, args.repeats)
        baseline = baseline or rtf
        print(f"{name:34} {rtf:7.3f} {1 / rtf:10.1f}x {rtf / baseline:15.2f}x")

    # 3: our wrapper against a direct faster-whisper call on the same model
    transcriber = Transcriber(base)
    model = transcriber.backend.model

    def direct() -> None:
        for a in clips:
            segments, _ = model.transcribe(a.samples, beam_size=args.beam_size, language=None,
                                           temperature=0.0)
            list(segments)

    def wrapped() -> None:
        for a in clips:
            transcriber(a)

    direct()
    wrapped()
    times: dict[str, list[float]] = {"direct": [], "wrapped": []}
    for _ in range(args.repeats):
        for name, fn in (("direct", direct), ("wrapped", wrapped)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    d, w = min(times["direct"]), min(times["wrapped"])
    print(f"\nwrapper overhead: direct faster-whisper {d:.3f} s, pixmo Transcriber {w:.3f} s, "
          f"overhead {100 * (w / d - 1):+.1f} % (goal < 5 %)")

    # 4: what pinned kernels and a fixed thread count cost
    determinism_cost(args)


if __name__ == "__main__":
    main()
