"""What a build of 1M, 10M and 100M samples would cost on N nodes, from two measured builds.

Runs the same engine as ``benchmarks/build.py`` (same generated input: 2.9 KiB
JPEGs, one pointing record each, transcription off) at N/10 and N samples, each
in a fresh process with its own temporary folder, and measures the wall time,
each stage's seconds (dataset.json's ``stage_seconds``: summed over the
workers, so CPU-seconds of work), the driver's peak RSS, the largest process
under it, the peak bytes of the groupings' spill files (the shuffle), and the
bytes written. Then fits per-sample costs and projects them, printing the
assumptions with the table:

- the work is spread over every core of the cluster: wall time = start-up +
  (work seconds per sample x samples) / (nodes x cores x efficiency) + the
  driver's serial seconds per sample x samples. Serial is what ``finish`` takes
  (timed apart: it streams every manifest row and reject into the tables); work
  is the stages' seconds plus what the runner spends between them (the wall
  time left once stages and ``finish`` are accounted for, at two sizes; on the
  local runner that bookkeeping runs in the driver's process, on a cluster in
  the workers);
- transcription, when on, adds audio seconds per sample x RTF per core;
- a node holds one worker process per core at the largest measured process's
  peak; the head node adds the driver: its measured peak plus per-shard state;
- every byte of the shuffle crosses the network once on a cluster.

    python benchmarks/cost_model.py [--n 100000] [--engine beam-workers2]
        [--nodes 1,8,64] [--cores 16] [--audio-s 0] [--rtf 0.079]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.build import _load, _tree_pss_mib, make_raw  # noqa: E402

SHARD_STATE_BYTES = 1024  # what the driver keeps per shard: its first key and its stats
EFFICIENCY = 0.8  # share of a cluster's cores the stages keep busy (stragglers, shuffles)


@dataclass
class Measured:
    samples: int
    wall_s: float
    stage_s: dict[str, float]
    driver_mib: float
    largest_process_mib: float
    shuffle_bytes: int
    output_bytes: int
    cores_used: int
    finish_s: float


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def measure(engine: str, raw: Path, out: Path, scratch: Path) -> Measured:
    """One build in a fresh process whose temporary folder is ``scratch``, sampled
    every 0.1 s for its processes' memory and its spill files' bytes."""
    scratch.mkdir()
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            "from benchmarks.build import engine; import time, pixmo.build as b; f = b.finish\n"
            "def timed(*a, **k):\n    t = time.perf_counter(); r = f(*a, **k)\n"
            "    print('finish', time.perf_counter() - t); return r\n"
            "b.finish = timed\n"
            f"engine({engine!r}, {str(raw)!r}, {str(out)!r})\n"
            "print(next(line.split()[1] for line in open('/proc/self/status') "
            "if line.startswith('VmHWM:')))")
    env = {**os.environ, "TMPDIR": str(scratch)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    largest, shuffle = 0.0, 0
    while proc.poll() is None:
        tree = _tree_pss_mib(proc.pid)
        largest = max([largest, *(v for pid, v in tree.items() if pid != proc.pid)])
        shuffle = max(shuffle, _dir_bytes(scratch))
        time.sleep(0.1)
    wall = time.perf_counter() - start
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{stderr[-3000:]}")
    description = json.loads((out / "dataset.json").read_text())
    return Measured(samples=description["counts"]["samples"], wall_s=wall,
                    stage_s=description.get("stage_seconds", {}),
                    driver_mib=int(stdout.split()[-1]) / 1024,
                    largest_process_mib=largest, shuffle_bytes=shuffle,
                    output_bytes=_dir_bytes(out / "shards"),
                    cores_used=os.cpu_count() or 1,
                    finish_s=float(stdout.split("finish", 1)[1].split()[0]))


@dataclass
class Model:
    """Per-sample costs fitted to two measured builds."""

    startup_s: float
    work_s: float  # stage and runner seconds per sample, spread over the cores
    serial_s: float  # the driver's own seconds per sample (finish)
    shuffle_bytes: float  # per sample
    output_bytes: float  # per sample
    driver_mib: float
    process_mib: float

    @classmethod
    def fit(cls, small: Measured, large: Measured) -> Model:
        def slope(a: float, b: float) -> float:
            return max(0.0, (b - a) / (large.samples - small.samples))

        serial = slope(small.finish_s, large.finish_s)
        # the runner's share: wall time less the stages spread over the cores and finish
        rest = [m.wall_s - sum(m.stage_s.values()) / m.cores_used - m.finish_s
                for m in (small, large)]
        runner = slope(*rest) * large.cores_used
        work = sum(large.stage_s.values()) / large.samples + runner
        startup = max(0.0, small.wall_s - work * small.samples / small.cores_used
                      - small.finish_s)
        return cls(startup_s=startup, work_s=work,
                   serial_s=serial, shuffle_bytes=large.shuffle_bytes / large.samples,
                   output_bytes=large.output_bytes / large.samples,
                   driver_mib=max(small.driver_mib, large.driver_mib),
                   process_mib=max(small.largest_process_mib, large.largest_process_mib))

    def project(self, samples: int, nodes: int, cores: int, audio_s: float, rtf: float
                ) -> dict[str, float]:
        work = self.work_s + audio_s * rtf
        shards = samples / 1000
        return {"wall_s": (self.startup_s + samples * work / (nodes * cores * EFFICIENCY)
                           + samples * self.serial_s),
                "worker_node_gib": cores * self.process_mib / 1024,
                "head_extra_gib": (self.driver_mib * 2**20 + shards * SHARD_STATE_BYTES) / 2**30,
                "shuffle_gib": samples * self.shuffle_bytes / 2**30,
                "output_gib": samples * self.output_bytes / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--engine", default="beam-workers2")
    parser.add_argument("--nodes", default="1,8,64")
    parser.add_argument("--cores", type=int, default=16, help="cores per node")
    parser.add_argument("--audio-s", type=float, default=0.0,
                        help="seconds of speech per sample to transcribe (PixMo-Cap: ~90)")
    parser.add_argument("--rtf", type=float, default=0.079,
                        help="transcription seconds per audio second on one core")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; load average {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for n in (args.n // 10, args.n):
            raw = Path(tmp, f"raw-{n}")
            make_raw(raw, n, seed=n)
            runs.append(measure(args.engine, raw, Path(tmp, f"out-{n}"), Path(tmp, f"tmp-{n}")))
            m = runs[-1]
            print(f"{args.engine} {n} samples: {m.wall_s:.1f} s wall, stages "
                  + ", ".join(f"{k} {v:.1f}" for k, v in sorted(m.stage_s.items()))
                  + f" s; driver {m.driver_mib:.0f} MiB, largest other process "
                  f"{m.largest_process_mib:.0f} MiB; shuffle peak {m.shuffle_bytes / 2**20:.1f} "
                  f"MiB; shards {m.output_bytes / 2**20:.1f} MiB; finish {m.finish_s:.1f} s; "
                  f"load {_load()}")
    model = Model.fit(*runs)
    print(f"fitted: start-up {model.startup_s:.1f} s, work {model.work_s * 1e3:.3f} "
          "core-ms/sample (stages and runner), driver serial "
          f"{model.serial_s * 1e6:.2f} us/sample, shuffle {model.shuffle_bytes:.0f} B/sample, "
          f"output {model.output_bytes:.0f} B/sample; "
          f"assumptions: {args.cores} cores/node at {EFFICIENCY:.0%} efficiency, "
          f"{args.audio_s:g} s audio/sample at RTF {args.rtf:g}/core, "
          f"{SHARD_STATE_BYTES} B driver state/shard of 1,000 samples")
    print("| samples | nodes | wall (h:mm) | memory per worker node (GiB) | head node extra (GiB) "
          "| shuffle (GiB) | output (GiB) |\n|---|---|---|---|---|---|---|")
    for samples in (1_000_000, 10_000_000, 100_000_000):
        for nodes in map(int, args.nodes.split(",")):
            p = model.project(samples, nodes, args.cores, args.audio_s, args.rtf)
            minutes = round(p["wall_s"] / 60)
            print(f"| {samples:,} | {nodes} | {minutes // 60}:{minutes % 60:02d} | "
                  f"{p['worker_node_gib']:.1f} | {p['head_extra_gib']:.2f} | "
                  f"{p['shuffle_gib']:.0f} | {p['output_gib']:.0f} |")


if __name__ == "__main__":
    main()
