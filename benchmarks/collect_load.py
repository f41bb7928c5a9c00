"""Load on ``pixmo collect``: N annotators submitting at once against one annotator alone.

A real ``pixmo collect`` server on 127.0.0.1 (its Whisper worker transcribing every
recording in the background, as in use) gets, first, one annotator's submissions one after
another (the baseline: the latency of a submission with nobody else on the server), then N
simulated annotators' submissions at once, each getting a task and submitting it (a 19.7 s
Opus recording for a caption task, three clicks for a pointing task). The latency of each
submission (the POST, until its 201) is timed by the client. The server is then killed with
SIGKILL and its files read back: every acknowledged record must be there exactly once, with
no torn line.

    python benchmarks/collect_load.py [--annotators 20] [--submissions 25]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CLIP = (REPO / "tests/data/speech/kitchen.opus").read_bytes()
SPEAKERS, LABELS = 4, 16  # per image: 4 caption sessions and 16 pointing labels


def make_raw(root: Path, tasks: int) -> Path:
    for i in range(-(-tasks // (SPEAKERS + LABELS))):
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (640, 480), (i % 256, 90, 160)).save(root / "images" / f"{i:04d}.png")
    (root / "labels.txt").write_text("".join(f"thing {n}\n" for n in range(LABELS)))
    return root


def start(raw: Path, tokens: dict[str, str]) -> tuple[subprocess.Popen, str]:
    (raw.parent / "annotators.json").write_text(json.dumps(tokens))
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("pixmo")), "collect", "--raw", str(raw),
         "--annotators", str(raw.parent / "annotators.json"), "--labels",
         str(raw / "labels.txt"), "--speakers-per-image", str(SPEAKERS), "--min-speech-s", "5",
         "--port", "0"], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("serving "):
            return proc, line.split()[1]
    raise SystemExit("the server did not start")


def annotate(url: str, token: str, n: int, out: list, start_line: threading.Barrier) -> None:
    """Do ``n`` tasks; append (seconds, kind, record) for each 201."""
    with httpx.Client(base_url=url, timeout=600,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        start_line.wait()
        for _ in range(n):
            res = client.get("/api/task")
            if res.status_code == 204:
                return
            t = res.json()
            began = time.perf_counter()
            if t["kind"] == "caption":
                done = client.post("/api/caption", data={"task_id": t["task_id"]},
                                   files={"audio": ("a", CLIP)})
            else:
                done = client.post("/api/points", json={
                    "task_id": t["task_id"], "label": t["label"], "units": "pixels",
                    "points": [{"x": 10, "y": 20}, {"x": 300, "y": 200}, {"x": 600, "y": 400}]})
            took = time.perf_counter() - began
            if done.status_code != 201:
                raise SystemExit(f"{done.status_code}: {done.text}")
            out.append((took, t["kind"], done.json()))


def run_phase(url: str, tokens: list[str], n: int) -> tuple[list, float]:
    out: list = []
    barrier = threading.Barrier(len(tokens))
    threads = [threading.Thread(target=annotate, args=(url, tok, n, out, barrier))
               for tok in tokens]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, time.perf_counter() - began


def check_files(raw: Path, acked: list) -> dict[str, int]:
    """Lost, duplicated and torn records once the server was killed."""
    files = {"caption": raw / "captions.jsonl", "points": raw / "points.jsonl"}
    torn = sum(1 for f in files.values() if f.read_bytes() and not f.read_bytes().endswith(b"\n"))
    written = {kind: [json.loads(x) for x in f.read_text().splitlines()]
               for kind, f in files.items()}
    lost = sum(1 for _, kind, rec in acked if rec not in written[kind])
    ids = [r["session_id"] for r in written["caption"]] + [
        r["annotation_id"] for r in written["points"]]
    return {"lost": lost, "duplicated": len(ids) - len(set(ids)), "torn": torn,
            "records": len(ids)}


def ms(values: list[float], q: float) -> float:
    return 1000 * statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--annotators", type=int, default=20)
    p.add_argument("--submissions", type=int, default=25)
    args = p.parse_args(argv)
    tokens = [secrets.token_urlsafe(18) for _ in range(args.annotators + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        raw = make_raw(Path(tmp) / "raw", (args.annotators + 1) * args.submissions)
        proc, url = start(raw, {t: f"a{i}" for i, t in enumerate(tokens)})
        try:
            alone, _ = run_phase(url, tokens[:1], args.submissions)
            crowd, wall = run_phase(url, tokens[1:], args.submissions)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        files = check_files(raw, alone + crowd)
    report = {"annotators": args.annotators, "submissions": len(crowd),
              "captions": sum(k == "caption" for _, k, _ in crowd), **files,
              "alone_p50_ms": ms([s for s, _, _ in alone], 50),
              "p50_ms": ms([s for s, _, _ in crowd], 50),
              "p95_ms": ms([s for s, _, _ in crowd], 95),
              "per_s": len(crowd) / wall}
    report["p50_ratio"] = report["p50_ms"] / report["alone_p50_ms"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    print(f"{report['annotators']} annotators at once, {report['submissions']} submissions "
          f"({report['captions']} recordings): p50 {report['p50_ms']:.1f} ms, p95 "
          f"{report['p95_ms']:.1f} ms, {report['per_s']:.1f} submissions/s")
    print(f"one annotator alone: p50 {report['alone_p50_ms']:.1f} ms; at once / alone: "
          f"{report['p50_ratio']:.2f}x")
    print(f"after SIGKILL: {report['records']} records on disk, {report['lost']} lost, "
          f"{report['duplicated']} duplicated, {report['torn']} torn")
    return report


if __name__ == "__main__":
    main()
