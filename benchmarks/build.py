"""Build throughput: Beam and Ray against a plain single-process loop.

All three read the same generated raw directory (images + points.jsonl,
transcription off, so the data path is what is timed) and write shards. The
plain loop reads each image, checks it, hashes it and writes it with
webdataset's ``ShardWriter``: the floor any engine must approach. Each run is
a separate process, timed from outside (start-up included), with its peak RSS
(Ray's workers are not children of the driver, so its figure is the driver's).
Memory is measured at N/10 and N samples to show whether it stays flat.

    python benchmarks/build.py [--n 10000] [--engines beam,ray]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_raw(root: Path, n: int, seed: int = 0) -> None:
    """n distinct JPEGs (about 10 KiB each) with one pointing record each."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True)
    with open(root / "points.jsonl", "w") as fh:
        for i in range(n):
            image = Image.new("RGB", (256, 192), tuple(rng.randrange(256) for _ in range(3)))
            draw = ImageDraw.Draw(image)
            for _ in range(6):
                x, y = rng.randrange(230), rng.randrange(170)
                draw.ellipse((x, y, x + 24, y + 20), fill=tuple(rng.randrange(256)
                                                                for _ in range(3)))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=85)
            (root / f"images/{i:06d}.jpg").write_bytes(buf.getvalue())
            record = {"image": f"images/{i:06d}.jpg", "label": "spot", "units": "pixels",
                      "points": [{"x": x + 12, "y": y + 10}], "annotator": "a1"}
            fh.write(json.dumps(record) + "\n")


def plain(raw: str, out: str) -> None:
    """The floor: one process, read, check, hash, write with webdataset."""
    import hashlib

    import webdataset as wds
    from PIL import Image

    Path(out, "shards").mkdir(parents=True)
    with wds.ShardWriter(f"{out}/shards/plain-%06d.tar", maxcount=1000, verbose=0) as sink, \
            open(Path(raw) / "points.jsonl") as fh:
        for line in fh:
            record = json.loads(line)
            data = (Path(raw) / record["image"]).read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                image.load()
            digest = hashlib.sha256(data).hexdigest()
            sink.write({"__key__": digest[:24], "jpg": data,
                        "json": {"image": {"sha256": digest, "width": width, "height": height},
                                 "points": record["points"]}})


def engine(name: str, raw: str, out: str) -> None:
    from pixmo.build import BuildConfig
    from pixmo.shards import ShardConfig

    cfg = BuildConfig(raw_dir=raw, transcribe=False, shards=ShardConfig(max_samples=1000))
    if name == "beam":
        from pipelines import beam

        beam.run(cfg, out, ["--direct_running_mode=in_memory"])
    elif name == "beam2":
        from pipelines import beam

        beam.run(cfg, out, workers=2)
    elif name == "beam-threads":
        from pipelines import beam

        beam.run(cfg, out, ["--direct_running_mode=multi_threading", "--direct_num_workers=2"])
    else:
        from pipelines import ray as ray_engine

        ray_engine.run(cfg, out, num_cpus=2)


def measure(what: str, raw: Path, out: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one run in a fresh process; the peak is the
    larger of the process itself and the children it waited for."""
    code = (f"import sys, resource; sys.path.insert(0, {str(REPO)!r}); "
            "from benchmarks.build import plain, engine; ")
    code += f"plain({str(raw)!r}, {str(out)!r})" if what == "plain" else \
        f"engine({what!r}, {str(raw)!r}, {str(out)!r})"
    code += ("; print(max(resource.getrusage(w).ru_maxrss for w in "
             "(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return seconds, int(proc.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--engines", default="beam,beam-threads,beam2,ray")
    args = parser.parse_args()
    engines = args.engines.split(",")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp, "raw-small"), Path(tmp, "raw-large")
        make_raw(small, args.n // 10, seed=1)
        make_raw(large, args.n, seed=2)
        results = {}
        for what in ["plain", *engines]:
            t_small, rss_small = measure(what, small, Path(tmp, f"{what}-small"))
            t_large, rss_large = measure(what, large, Path(tmp, f"{what}-large"))
            results[what] = (t_large, rss_small, rss_large)
        floor = args.n / results["plain"][0]
        print(f"{args.n} samples (images about 10 KiB, transcription off)")
        print(f"{'run':12s} {'samples/s':>10s} {'vs plain':>9s} {'peak RSS N/10':>14s} "
              f"{'peak RSS N':>11s}")
        for what, (seconds, rss_small, rss_large) in results.items():
            rate = args.n / seconds
            print(f"{what:12s} {rate:10.0f} {rate / floor:8.2f}x {rss_small:12.0f} MiB "
                  f"{rss_large:7.0f} MiB")


if __name__ == "__main__":
    main()
