"""Running a published benchmark on a checkpoint: batched, resumable, over several ranks.

Each rank answers its slice of the questions not answered yet, in batches (one padded
``generate`` call with the KV cache per batch), and appends one JSON line per answer to its
own part file, flushed and fsynced before the next batch: a killed run keeps every answer it
wrote, and a rerun on the same ``out_dir`` (any number of ranks) skips those keys. When
every rank is done, rank 0 gathers the parts into ``predictions.jsonl`` (in question order)
and ``summary.json``. The out folder must be shared by the ranks (one machine, or a shared
file system).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from molmo.eval.benchmarks import (
    MAX_NEW_TOKENS,
    Question,
    check_benchmark,
    questions,
    score,
    summarize,
)
from pixmo.atomic import atomic_write_bytes
from pixmo.config import at_least, check_fields
from pixmo.errors import PixmoError

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
PART_GLOB = "part-*.jsonl"


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to evaluate, on what, and how many answers to generate together."""

    benchmark: str
    dataset: str
    checkpoint: str
    out_dir: str
    batch_size: int = 8
    max_new_tokens: int = MAX_NEW_TOKENS
    limit: int | None = None  # only the first N questions (a quick look, a dry run)

    def __post_init__(self) -> None:
        check_benchmark(self.benchmark)
        check_fields(self, batch_size=at_least(1), max_new_tokens=at_least(1),
                     limit=at_least(1))


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def read_parts(out: Path) -> Iterator[dict[str, Any]]:
    """Every complete answer line of every part file. A last line without its newline is
    torn, even when it parses: ``PartWriter`` cuts it off before appending."""
    for part in sorted(out.glob(PART_GLOB)):
        for line in part.read_bytes().split(b"\n")[:-1]:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "key" in record:
                yield record


class PartWriter:
    """Appends answer lines to one rank's part file; each batch is fsynced before the next."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes() if path.exists() else b""
        keep = data.rfind(b"\n") + 1  # drop a line torn by a kill
        self.fh = open(path, "r+b" if path.exists() else "wb")
        self.fh.truncate(keep)
        self.fh.seek(keep)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        self.fh.write(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n"
                               for r in records))
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def _check_run(out: Path, cfg: BenchmarkConfig, rank: int, settings: dict[str, Any]) -> None:
    """A rerun must be the same benchmark, dataset, checkpoint and model settings, or its
    answers would mix."""
    same = {"benchmark": cfg.benchmark, "dataset": os.path.abspath(cfg.dataset),
            "checkpoint": os.path.abspath(cfg.checkpoint), "max_new_tokens": cfg.max_new_tokens,
            **settings}
    path = out / RUN_JSON
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except ValueError as exc:
            raise PixmoError(f"{RUN_JSON} is not JSON ({exc}); use another --out",
                             file=str(out)) from exc
        changed = sorted(k for k in same if before.get(k) != same[k])
        if changed:
            raise PixmoError(f"holds answers of another run (differs in {', '.join(changed)}); "
                             "use another --out to start afresh", file=str(out))
    elif rank == 0:
        atomic_write_bytes(path, (json.dumps(same, indent=2) + "\n").encode())


def _answer(predictor: Any, batch: Sequence[Question], config: Any) -> list[str]:
    from molmo.data.tasks import load_image

    arrays = [predictor.processor(load_image(q.sample), q.prompt) for q in batch]
    return [a.text for a in predictor.answer_arrays(arrays, config)]


def run_benchmark(cfg: BenchmarkConfig, load_predictor: Callable[[], Any],
                  after_batch: Callable[[list[dict[str, Any]]], None] | None = None,
                  settings: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Answer and score every question not answered in ``cfg.out_dir`` yet; on rank 0 return
    the summary of all of them (other ranks return None). ``load_predictor`` gives a
    ``molmo.predict.Predictor``, called once the questions are read (a bad dataset fails
    before a model loads); ``after_batch`` sees each batch's records once they are on disk;
    ``settings`` (dtype, tokenizer) also decide the answers, so a rerun must repeat them."""
    from molmo.generate import GenerationConfig

    rank, world = _world()
    out = Path(cfg.out_dir)
    asked = questions(cfg.benchmark, cfg.dataset, cfg.limit)
    out.mkdir(parents=True, exist_ok=True)
    _check_run(out, cfg, rank, settings or {})
    _barrier()  # run.json is checked by every rank before any answer is written
    done = {r["key"] for r in read_parts(out)}
    # every rank slices the same list only if none appends before all have read the parts
    _barrier()
    todo = [q for q in asked if q.key not in done][rank::world]
    if rank == 0:
        log.info("%s: %d questions, %d answered before, %d rank(s) answer the rest",
                 cfg.benchmark, len(asked), len(done.intersection(q.key for q in asked)), world)
    predictor = load_predictor()
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens,
                           stop_token_ids=(predictor.tokenizer.eos_id,))
    writer = PartWriter(out / f"part-{rank:05d}.jsonl")
    try:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start:start + cfg.batch_size]
            records = [score(cfg.benchmark, q, text)
                       for q, text in zip(batch, _answer(predictor, batch, gen), strict=True)]
            writer.write(records)
            if after_batch is not None:
                after_batch(records)
    finally:
        writer.close()
    _barrier()
    return gather(cfg, asked) if rank == 0 else None


def gather(cfg: BenchmarkConfig, asked: Sequence[Question]) -> dict[str, Any]:
    """Every rank's answers in question order as ``predictions.jsonl``, and the summary."""
    out = Path(cfg.out_dir)
    by_key: dict[str, dict[str, Any]] = {}
    for record in read_parts(out):
        by_key.setdefault(record["key"], record)
    missing = [q.key for q in asked if q.key not in by_key]
    if missing:
        raise PixmoError(f"{len(missing)} question(s) have no answer (first: {missing[0]}); "
                         "run again to finish", file=str(out))
    records = [by_key[q.key] for q in asked]
    summary = {**summarize(cfg.benchmark, records), "config": asdict(cfg)}
    atomic_write_bytes(out / PREDICTIONS, b"".join(
        json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records))
    atomic_write_bytes(out / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def evaluate_benchmark(cfg: BenchmarkConfig, *, device: str = "cpu", dtype: str | None = None,
                       tokenizer: str | None = None) -> dict[str, Any] | None:
    """``molmo eval --benchmark``: load the checkpoint (under torchrun: one copy per rank, on
    its own GPU when ``device`` is cuda), run the benchmark, and tear down the process group
    if this call set it up."""
    import torch
    import torch.distributed as dist

    from molmo.predict import DTYPES, Predictor
    from molmo.train import parallel
    from molmo.train.config import ParallelConfig

    if not (Path(cfg.checkpoint) / "config.json").is_file():
        raise PixmoError("no model here (config.json missing)", file=cfg.checkpoint)
    owned = "WORLD_SIZE" in os.environ and not dist.is_initialized()
    if "WORLD_SIZE" in os.environ:
        world = parallel.init(ParallelConfig(device="cuda" if device.startswith("cuda")
                                             else "cpu"))
        device = str(world.device)
    dtype = dtype or ("float32" if torch.device(device).type == "cpu" else "bfloat16")
    ok = False
    try:
        settings = {"dtype": dtype, "tokenizer": os.path.abspath(tokenizer or cfg.checkpoint)}
        summary = run_benchmark(cfg, lambda: Predictor(
            cfg.checkpoint, tokenizer=tokenizer, device=device, dtype=DTYPES[dtype]),
            settings=settings)
        ok = True
        return summary
    finally:
        if owned:
            parallel.close(wait=ok)
