"""Build throughput: Beam and Ray against a plain single-process loop.

All three read the same generated raw directory (images + points.jsonl,
transcription off, so the data path is what is timed) and write shards. The
plain loop reads each image, checks it, hashes it and writes it with
webdataset's ``ShardWriter``: the floor any engine must approach. Each run is
a separate process, timed from outside (start-up included). Memory is the
driver's peak RSS, the peak PSS of the driver with every process under it
(pool workers, Ray's raylet and workers) and each of those processes' own
peak PSS added up, at N/10 and N samples, to show whether it stays flat.
The machine may be shared: ``--repeats`` interleaves rounds of plain loop
and engines, and the load average is printed with each.

    python benchmarks/build.py [--n 10000] [--engines beam,ray] [--repeats 3]

``ray-attached`` runs the Ray build against a Ray already started on this
machine (``ray start --head`` with every core, before the rounds and stopped
after them), as a build joins a cluster with ``--ray-address``: Ray's own
start-up (GCS, raylet, first workers: 7-10 s on 2 cores) is then not the
build's; its tree columns then count the driver only. Run it on its own: while
that Ray runs, ``ray.init()`` of the other Ray engines joins it too.

``--extend`` measures instead what grows with the dataset already there: the
driver's peak RSS of ``pixmo inspect`` and of a ``--mode extend`` build adding
the same 1,000 images (100 of them already in) to a finished dataset of N/10
and of N tiny samples (written directly, not built, so a 100,000-sample base
takes seconds).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_raw(root: Path, n: int, seed: int = 0) -> None:
    """n distinct 256x192 JPEGs (about 3 KiB each) with one pointing record each."""
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


ENGINES = {
    # name: (engine, Beam options, --workers)
    "beam": ("beam", ["--direct_running_mode=in_memory"], 1),
    "beam-workers2": ("beam", ["--direct_running_mode=in_memory"], 2),
    "beam-mp2": ("beam", ["--direct_running_mode=multi_processing",
                          "--direct_num_workers=2"], 1),
    "beam-threads2": ("beam", ["--direct_running_mode=multi_threading",
                               "--direct_num_workers=2"], 1),
    "ray": ("ray", [], 1),  # Ray on every core; --workers: transcription actors
    "ray-workers2": ("ray", [], 2),
    "ray-attached": ("ray", [], 1),  # joins the Ray that main() starts
}
RAY_PORT = 6391


def engine(name: str, raw: str, out: str, mode: str = "resume") -> None:
    from pixmo.build import BuildConfig
    from pixmo.dataset.writer import ShardConfig

    cfg = BuildConfig(raw_dir=raw, transcribe=False, shards=ShardConfig(max_samples=1000))
    kind, options, workers = ENGINES[name]
    if kind == "beam":
        from pipelines.beam import graph as beam
        beam.run(cfg, out, options, workers=workers, mode=mode)
    else:
        from pipelines import ray as ray_engine

        address = f"127.0.0.1:{RAY_PORT}" if name.endswith("attached") else None
        ray_engine.run(cfg, out, workers=workers, mode=mode, address=address)


def _tree_pss_mib(root: int) -> dict[int, float]:
    """Proportional set size of a process and each of its descendants, MiB
    (shared pages split between the processes that share them, so forked
    workers are not counted twice)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    out[pid] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return out


@dataclass
class Run:
    seconds: float
    # peak RSS of the driver process: VmHWM, not getrusage's ru_maxrss, which keeps
    # the peak of the parent it was forked from across exec
    driver_rss_mib: float
    tree_pss_mib: float  # peak PSS of the driver and every process under it, sampled
    # each process's own peak PSS, added up: a bound on the tree's peak that does not
    # depend on how long a run gives the processes' peaks to coincide
    peaks_pss_mib: float


def measure(what: str, raw: Path, out: Path, call: str | None = None) -> Run:
    """One run in a fresh process, timed from outside (start-up included);
    ``call`` (Python, run after the imports) replaces the plain loop or engine."""
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            "from benchmarks.build import plain, engine, inspect; ")
    code += call or (f"plain({str(raw)!r}, {str(out)!r})" if what == "plain" else
                     f"engine({what!r}, {str(raw)!r}, {str(out)!r})")
    code += ("; print(next(line.split()[1] for line in open('/proc/self/status') "
             "if line.startswith('VmHWM:')))")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak, peaks = 0.0, {}
    while proc.poll() is None:
        tree = _tree_pss_mib(proc.pid)
        peak = max(peak, sum(tree.values()))
        for pid, pss in tree.items():
            peaks[pid] = max(peaks.get(pid, 0.0), pss)
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{stderr[-3000:]}")
    shutil.rmtree(out)
    return Run(seconds, int(stdout.split()[-1]) / 1024, peak, sum(peaks.values()))


def _tiny_png(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (i % 256, i // 256 % 256, i // 65536 % 256)).save(buf, "PNG")
    return buf.getvalue()


def make_base(out: Path, n: int) -> None:
    """A finished dataset of n samples of distinct 8x6 PNGs, one label set
    each, in key order as a build writes them, and n/10 rejects, written
    directly by ``write_dataset``."""
    import hashlib

    from pixmo.dataset.format import ShardSample
    from pixmo.dataset.samples import sample_key
    from pixmo.dataset.writer import ShardConfig, write_dataset

    def samples():
        for i in sorted(range(n), key=lambda i: hashlib.sha256(_tiny_png(i)).hexdigest()):
            data = _tiny_png(i)
            digest = hashlib.sha256(data).hexdigest()
            yield ShardSample(sample_key(digest), {
                "schema_version": 1, "key": sample_key(digest),
                "image": {"sha256": digest, "width": 8, "height": 6, "format": "png",
                          "source": f"images/{i:06d}.png"},
                "transcripts": [], "captions": [], "qa": [],
                "points": [{"label": "spot", "points": [[4.0, 3.0]], "count": 1,
                            "collection_method": "pointing", "annotators": ["a1"]}],
                "sources": [{"file": "points.jsonl", "record": str(i + 1)}]}, {"png": data})

    rejects = ({"stage": "read", "reason": "invalid_record", "detail": "not JSON",
                "source": "points.jsonl", "record": str(n + i + 1)} for i in range(n // 10))
    write_dataset(out, samples(), name="base", config=ShardConfig(max_samples=1000),
                  rejects=rejects, engine="local")


def make_extend_raw(root: Path, first: int, n: int) -> None:
    """n images numbered from ``first`` (those below the base's size are in it)."""
    (root / "images").mkdir(parents=True)
    with open(root / "points.jsonl", "w") as fh:
        for i in range(first, first + n):
            (root / f"images/{i:06d}.png").write_bytes(_tiny_png(i))
            fh.write(json.dumps({"image": f"images/{i:06d}.png", "label": "spot",
                                 "units": "pixels", "points": [{"x": 4, "y": 3}],
                                 "annotator": "a1"}) + "\n")


def inspect(dataset: str) -> None:
    import contextlib

    from pipelines.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        main(["inspect", dataset])


def extend_memory(n: int, engines: list[str], tmp: str) -> None:
    """Driver peak RSS of inspect and of an extend by 1,000 images, on bases of
    N/10 and N samples."""
    print(f"driver peak RSS, MiB, base of {n // 10} -> {n} samples; extend adds 1,000 images, "
          "100 of them in the base already")
    results: dict[str, list[float]] = {}
    for size in (n // 10, n):
        base, raw = Path(tmp, f"base-{size}"), Path(tmp, f"extend-raw-{size}")
        start = time.perf_counter()
        make_base(base, size)
        make_extend_raw(raw, size - 100, 1000)
        print(f"base of {size} samples written in {time.perf_counter() - start:.0f} s")
        scratch = Path(tmp, "scratch")  # measure removes its out folder
        scratch.mkdir()
        results.setdefault("inspect", []).append(
            measure("inspect", raw, scratch, f"inspect({str(base)!r})").driver_rss_mib)
        for name in engines:
            out = Path(tmp, f"extend-{name}")
            shutil.copytree(base, out)
            run = measure(name, raw, out, f"engine({name!r}, {str(raw)!r}, {str(out)!r}, "
                                          "mode='extend')")
            results.setdefault(f"extend {name}", []).append(run.driver_rss_mib)
        shutil.rmtree(base)
    for what, (small, large) in results.items():
        print(f"{what:22s} {small:6.0f} -> {large:6.0f}")


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds at N, each timing the plain loop and then every engine")
    parser.add_argument("--extend", action="store_true",
                        help="driver memory of inspect and --mode extend on a base of N/10 "
                             "and N samples, instead of throughput")
    args = parser.parse_args()
    engines = args.engines.split(",")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.extend:
            extend_memory(args.n, engines, tmp)
            return
        if any(name.endswith("attached") for name in engines):
            _start_ray(tmp)
        try:
            _throughput(args, engines, tmp)
        finally:
            if any(name.endswith("attached") for name in engines):
                subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"],
                               capture_output=True, check=False)


def _start_ray(tmp: str) -> None:
    """A one-node Ray of every core for ``ray-attached`` (token auth off: the
    benchmark's own processes are its only clients)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head",
                    f"--port={RAY_PORT}", f"--num-cpus={os.cpu_count()}",
                    "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True)


def _throughput(args: argparse.Namespace, engines: list[str], tmp: str) -> None:
    small, large = Path(tmp, "raw-small"), Path(tmp, "raw-large")
    make_raw(small, args.n // 10, seed=1)
    make_raw(large, args.n, seed=2)
    runs = ["plain", *engines]
    memory = {what: measure(what, small, Path(tmp, f"{what}-small")) for what in runs}
    rounds = []
    for i in range(args.repeats):
        before = _load()
        rounds.append({what: measure(what, large, Path(tmp, f"{what}-large"))
                       for what in runs})
        print(f"round {i + 1}: load average {before} before, {_load()} after")
    image_kib = sum(p.stat().st_size for p in large.glob("images/*")) / args.n / 1024
    print(f"{args.n} samples (images {image_kib:.1f} KiB on average, transcription off); "
          "samples/s per round, ratio to the plain loop of the same round; peak memory "
          "at N/10 -> N (driver RSS | process tree PSS | per-process peak PSS added up, "
          "MiB; N: last round)")
    for what in runs:
        rates = [args.n / r[what].seconds for r in rounds]
        ratios = [args.n / r[what].seconds / (args.n / r["plain"].seconds) for r in rounds]
        last = rounds[-1][what]
        print(f"{what:14s} " + " ".join(f"{rate:6.0f}/s {ratio:4.2f}x"
                                        for rate, ratio in zip(rates, ratios, strict=True))
              + "   memory " + " -> ".join(
                  f"{r.driver_rss_mib:4.0f} | {r.tree_pss_mib:4.0f} | {r.peaks_pss_mib:4.0f}"
                  for r in (memory[what], last)))


if __name__ == "__main__":
    main()
