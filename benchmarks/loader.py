"""How fast does the loader turn PixMo shards into model-ready Molmo batches, and how much memory
does it hold?

Writes a synthetic dataset (JPEG photos-sized images, a caption, three point sets and a QA pair per
sample), then, each in a fresh process so peak RSS is its own: reads the shards with plain
webdataset and no decoding (the I/O floor), and runs ``MolmoLoader`` (finite epoch, default 336 px
/ 12 crop preprocessing) with 0 workers and with 1 and 2 workers of each type (``--worker-types``:
DataLoader processes, or threads of the main process), for each crop transport
(``--pixel-dtypes``): uint8 crops normalised by the consumer (``normalize_images``, on CPU here,
inside the timing; in training it runs on the GPU) or float32 crops normalised in the workers.
Prints samples/s into model-ready batches, the ratios against 0 workers and against the floor, and
the peak RSS of the main process and of the largest worker process; then the 2-worker runs again on
a dataset ``--scale`` times larger, reading the same number of samples, to show that memory does
not grow with the dataset. Time and CPU count from after the imports; "steady" leaves out each
worker's first batch (process start). CPU time is split between the main process (with its threads)
and the worker processes (read from /proc while they live); as two cores do at most 2 CPU-seconds
per second, 2 x (CPU per sample with 0 workers) / (CPU per sample with 2 workers) is the most that
2 workers can gain on two idle cores. Then two 0-worker runs side by side, the rate two cores give
two processes that share no data: the machine's own ceiling for 2 workers. Last, what a worker
costs the training loop beside it: the rate at which the main thread runs tiny torch ops (the
GIL-holding part of launching GPU kernels) while one worker of each type preprocesses on the other
core, against no worker.

    python benchmarks/loader.py [--samples 160] [--batch 4] [--scale 4] [--repeats 2]
                                [--pixel-dtypes uint8 float32] [--worker-types process thread]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _sample(i: int, rng: np.random.Generator):
    import hashlib

    from PIL import Image

    from pixmo.dataset.format import ShardSample

    h, w = (480, 640) if i % 2 else (640, 480)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // w), (y * 255 // h), np.full_like(x, (i * 37) % 256)], -1)
    noise = rng.integers(0, 40, size=(h, w, 3))
    buf = io.BytesIO()
    Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    points = [{"label": label, "points": rng.uniform(0, 100, size=(n, 2)).round(1).tolist(),
               "count": n, "collection_method": "pointing", "annotators": ["a1"]}
              for label, n in (("red mug", 1), ("pencil", 4), ("window", 0))]
    obj = {"schema_version": 1, "key": digest[:24],
           "image": {"sha256": digest, "width": w, "height": h, "format": "jpeg",
                     "source": f"images/{i}.jpg"},
           "transcripts": [],
           "captions": [{"text": "A wooden desk by a window with a red mug, four pencils and "
                                 "a stack of notebooks in soft afternoon light. " * 3,
                         "method": "cleanup"}],
           "points": points,
           "qa": [{"question": "What is on the desk?", "answer": "A mug, pencils and books."}],
           "sources": [{"file": "captions.jsonl", "record": str(i + 1)}]}
    return ShardSample(key=obj["key"], json=obj, files={"jpg": data})


def make_dataset(path: Path, n: int) -> None:
    from pixmo.dataset.writer import ShardConfig, write_dataset

    rng = np.random.default_rng(0)
    write_dataset(path, (_sample(i, rng) for i in range(n)), name=path.name,
                  config=ShardConfig(max_samples=40))


def prepare(out: Path, samples: int, scale: int) -> None:
    """The two datasets and a small BPE tokenizer trained on their text."""
    from molmo.preprocess.tokenizer import train_bpe_tokenizer

    make_dataset(out / "small", samples)
    make_dataset(out / "large", samples * scale)
    texts = [_sample(0, np.random.default_rng(0)).json["captions"][0]["text"]] * 50
    train_bpe_tokenizer(texts, out / "tok", vocab_size=1024)


def _stat(pid: str) -> list[str]:
    """Fields of /proc/PID/stat from the third (state) on: the name may hold spaces."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far of this process and of its live children (the DataLoader workers)."""
    def cpu(fields: list[str]) -> float:
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    me, kids = str(os.getpid()), 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != me:
            try:
                fields = _stat(entry.name)
            except OSError:  # exited meanwhile
                continue
            if fields[1] == me:  # parent pid
                kids += cpu(fields)
    return cpu(_stat("self")), kids


def _peak_rss() -> dict:
    """Peak RSS (MiB) of this process (VmHWM: its own, not inherited across exec) and of its
    largest finished child (the workers have exited when this is called)."""
    status = Path("/proc/self/status").read_text()
    hwm_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM:"))
                  .split()[1])
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"rss_main": hwm_kib / 1024, "rss_worker": kids.ru_maxrss / 1024}


def _launches(seconds: float) -> float:
    """Tiny torch ops per second in this thread: the Python and dispatcher work with which a
    training loop launches its GPU kernels, the part of a step that needs the GIL."""
    import torch

    x, n = torch.zeros(16), 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            x * 2 + 1
        n += 100
    return n / seconds


def launch_rate(spec: dict) -> dict:
    """Launch rate of the main thread while one worker of ``spec``'s type preprocesses without
    pause (a deep prefetch, so it never waits), or with no loader at all (``workers`` 0)."""
    if not spec["workers"]:
        return {"launches": _launches(spec["seconds"])}
    from molmo.data.config import DataConfig, DatasetConfig
    from molmo.data.loader import MolmoLoader
    from molmo.preprocess.tokenizer import MolmoTokenizer

    cfg = DataConfig(datasets=(DatasetConfig("bench", spec["data"]),), batch_size=spec["batch"],
                     num_workers=1, worker_type=spec["worker_type"], prefetch_factor=10_000)
    batches = iter(MolmoLoader(cfg, MolmoTokenizer.from_dir(spec["tokenizer"])))
    next(batches)  # the worker is up and busy
    rate = _launches(spec["seconds"])
    batches.close()
    return {"launches": rate}


def run_one(spec: dict) -> dict:
    """One measurement, in this (fresh) process, from after the imports. The steady rate and
    CPU leave out each worker's first batch (process start)."""
    import torch

    torch.set_num_threads(1)  # one core per process: workers get one thread each too
    if spec["kind"] == "launches":
        return launch_rate(spec)
    if spec["kind"] == "webdataset":
        import webdataset as wds

        from pixmo.dataset.reader import shard_urls

        start, cpu_at = time.perf_counter(), _cpu_seconds()
        dataset = wds.WebDataset(shard_urls(spec["data"]), shardshuffle=False,
                                 empty_check=False)
        n = sum(1 for _ in dataset)
        steady_at, steady_n, cpu_end = start, 0, _cpu_seconds()
    else:
        from molmo.data.config import DataConfig, DatasetConfig
        from molmo.data.loader import MolmoLoader
        from molmo.preprocess.batching import normalize_images
        from molmo.preprocess.tokenizer import MolmoTokenizer

        start = time.perf_counter()
        cfg = DataConfig(datasets=(DatasetConfig("bench", spec["data"]),),
                         batch_size=spec["batch"], mode="finite",
                         num_workers=spec["workers"], shuffle_block=64,
                         pixel_dtype=spec["pixel_dtype"],
                         worker_type=spec.get("worker_type", "process"))
        loader = MolmoLoader(cfg, MolmoTokenizer.from_dir(spec["tokenizer"]))
        batches = iter(loader)
        n = 0
        warmup = spec["batch"] * max(spec["workers"], 1)  # each worker's first batch
        for batch in batches:
            if cfg.pixel_dtype == "uint8":  # the consumer's share of making it model-ready
                batch = normalize_images(batch, loader.processor.config)
            assert batch["images"].dtype == torch.float32
            n += batch["input_ids"].shape[0]
            if n == warmup:
                steady_at, steady_n, cpu_at = time.perf_counter(), n, _cpu_seconds()
            if n >= spec["limit"]:
                break
        cpu_end = _cpu_seconds()
        batches.close()  # stops and joins the workers
    end = time.perf_counter()
    steady = n - steady_n
    return {"samples": n, "rate": n / (end - start), "steady": steady / (end - steady_at),
            "cpu_main": (cpu_end[0] - cpu_at[0]) / steady,
            "cpu_workers": (cpu_end[1] - cpu_at[1]) / steady, **_peak_rss()}


PAIR = "two 0-worker loaders side by side, rates summed"


def measure(spec: dict, copies: int = 1) -> dict:
    """One run in a fresh process; with ``copies`` > 1 that many identical runs side by side,
    their rates summed (CPU per sample averaged, RSS the largest): what the machine itself gives
    independent processes, with no data passing between them."""
    procs = [subprocess.Popen([sys.executable, __file__, "--run", json.dumps(spec)],
                              stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, proc.args)
        results.append(json.loads(out.strip().splitlines()[-1]))
    if copies == 1:
        return results[0]
    combined = {key: max(r[key] for r in results) for key in ("rss_main", "rss_worker")}
    combined.update({key: sum(r[key] for r in results) for key in ("samples", "rate", "steady")})
    combined.update({key: sum(r[key] for r in results) / copies
                     for key in ("cpu_main", "cpu_workers")})
    return combined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=160)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs; median shown")
    parser.add_argument("--pixel-dtypes", nargs="+", choices=("uint8", "float32"),
                        default=["uint8", "float32"],
                        help="crop transports to measure; the first also gets the large dataset")
    parser.add_argument("--worker-types", nargs="+", choices=("process", "thread"),
                        default=["process", "thread"], help="DataConfig.worker_type values")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.samples <= 2 * args.batch:
        parser.error("--samples must exceed 2 x --batch: each worker's first batch is left out "
                     "of the steady rate")
    if args.run:
        print(json.dumps(run_one(json.loads(args.run))))
        return
    if args.prepare:
        prepare(Path(args.prepare), args.samples, args.scale)
        return

    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp, "small"), Path(tmp, "large")
        # In a child, so that this parent stays small: measured runs are its children.
        subprocess.run([sys.executable, __file__, "--prepare", tmp, "--samples",
                        str(args.samples), "--scale", str(args.scale)], check=True)
        common = {"kind": "loader", "tokenizer": str(Path(tmp, "tok")), "batch": args.batch,
                  "limit": args.samples}
        specs = {"webdataset, no decoding (I/O floor)": {"kind": "webdataset",
                                                          "data": str(small)}}
        for dtype in args.pixel_dtypes:
            specs[_name(dtype, 0)] = {"data": str(small), "workers": 0, "pixel_dtype": dtype,
                                      **common}
            for kind in args.worker_types:
                for workers in (1, 2):
                    specs[_name(dtype, workers, kind)] = {
                        "data": str(small), "workers": workers, "pixel_dtype": dtype,
                        "worker_type": kind, **common}
        first = args.pixel_dtypes[0]
        for kind in args.worker_types:
            specs[f"{_name(first, 2, kind)}, {args.scale}x dataset"] = {
                "data": str(large), "workers": 2, "pixel_dtype": first, "worker_type": kind,
                **common}
        specs[PAIR] = specs[_name(first, 0)]
        runs: dict[str, list[dict]] = {name: [] for name in specs}
        launch_specs = {kind: {**common, "kind": "launches", "data": str(small), "seconds": 3,
                               "workers": int(kind != "none"), "worker_type": kind}
                        for kind in ("none", *args.worker_types)}
        launches: dict[str, list[float]] = {kind: [] for kind in launch_specs}
        for _ in range(args.repeats):
            for name, spec in specs.items():
                runs[name].append(measure(spec, copies=2 if name == PAIR else 1))
            for kind, spec in launch_specs.items():
                launches[kind].append(measure(spec)["launches"])

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}; {args.samples} samples "
          f"read per run (640x480 JPEG), batch {args.batch}, default preprocessing (336 px "
          f"crops, up to 12); median of {args.repeats}")
    print(f"{'run':58s} {'samples/s':>9s} {'steady':>7s} {'steady CPU ms/sample':>18s} "
          f"{'peak RSS MiB':>18s}")
    print(f"{'':58s} {'':>9s} {'':>7s} {'main':>8s} {'workers':>9s} {'main':>8s} "
          f"{'worker':>9s}")
    steady, cpu = {}, {}
    for name, results in runs.items():
        r = sorted(results, key=lambda x: x["steady"])[len(results) // 2]
        steady[name] = r["steady"]
        cpu[name] = r["cpu_main"] + r["cpu_workers"]
        print(f"{name:58s} {r['rate']:9.1f} {r['steady']:7.1f} {1000 * r['cpu_main']:8.1f} "
              f"{1000 * r['cpu_workers']:9.1f} {r['rss_main']:8.0f} {r['rss_worker']:9.0f}")
    for dtype in args.pixel_dtypes:
        base = steady[_name(dtype, 0)]
        for kind in args.worker_types:
            for workers in (1, 2):
                print(f"{dtype}: {workers} {kind} workers / 0 workers (steady samples/s): "
                      f"{steady[_name(dtype, workers, kind)] / base:.2f}x")
            # Two cores do at most 2 s of CPU per second: CPU per sample bounds the speed-up.
            print(f"{dtype}: CPU bound for 2 {kind} workers on 2 idle cores: 2 x "
                  f"{1000 * cpu[_name(dtype, 0)]:.1f} / "
                  f"{1000 * cpu[_name(dtype, 2, kind)]:.1f} ms = "
                  f"{2 * cpu[_name(dtype, 0)] / cpu[_name(dtype, 2, kind)]:.2f}x")
    print(f"two 0-worker loaders side by side / one ({first}): "
          f"{steady[PAIR] / steady[_name(first, 0)]:.2f}x (what two cores give two processes "
          "that exchange nothing)")
    kind = args.worker_types[0]
    if len(set(args.pixel_dtypes)) == 2:
        uint8_2 = steady[_name("uint8", 2, kind)]
        print(f"uint8 2 {kind} workers / float32 0 workers: "
              f"{uint8_2 / steady[_name('float32', 0)]:.2f}x; uint8 / float32, 2 {kind} "
              f"workers: {uint8_2 / steady[_name('float32', 2, kind)]:.2f}x")
    floor = steady["webdataset, no decoding (I/O floor)"]
    print(f"I/O floor / 2 {kind} workers ({first}): "
          f"{floor / steady[_name(first, 2, kind)]:.0f}x")
    alone = float(np.median(launches["none"]))
    for kind in args.worker_types:
        print(f"training-loop launches (tiny torch ops/s in the main thread) while 1 {kind} "
              f"worker preprocesses: {np.median(launches[kind]) / alone:.2f}x of none running "
              f"({alone:,.0f}/s)")


def _name(pixel_dtype: str, workers: int, worker_type: str | None = None) -> str:
    kind = f" {worker_type}" if worker_type else ""
    return f"MolmoLoader, {pixel_dtype} crops, {workers}{kind} workers"


if __name__ == "__main__":
    main()
