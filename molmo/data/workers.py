"""Data-loader workers as threads of the consuming process.

The batches of the DataLoader's worker processes are built in one process and rebuilt in
another: every crop is copied into fresh shared memory and mapped again on the other side, CPU
work that the in-process loader never does (6-11% of a batch's preprocessing, BENCHMARKS.md).
Most of the preprocessing (image decode, resize, numpy and torch array work) runs without the
GIL, so threads share the cores nearly as well as processes, and a batch moves by reference.
The price is the GIL time that remains (about 13% of a worker's time, much of it in the
tokenizer), taken from the training loop beside them.

:func:`round_robin` takes batches from the workers in the order the DataLoader takes them from
its worker processes for an iterable dataset (worker 0, 1, ..., skipping exhausted workers), so
the two worker types yield the same batch sequence.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_POLL_S = 0.1  # how often a worker blocked on a full queue checks for shutdown


def round_robin(work: Callable[[int], Iterator[Any]], workers: int, prefetch: int,
                timeout_s: float = 0.0) -> Iterator[Any]:
    """Items of ``work(0)``, ``work(1)``, ... taken in turn, each iterator run in its own thread
    with up to ``prefetch`` items ready. A worker's exception is raised here; a worker silent
    for ``timeout_s`` (0: wait forever) fails the run. Closing the iterator stops the threads and
    waits for them (at most ``timeout_s`` each, if set)."""
    if workers < 1 or prefetch < 1:
        raise ValueError(f"round_robin needs workers >= 1 and prefetch >= 1, got {workers}, "
                         f"{prefetch}")
    stop = threading.Event()
    queues: list[queue.Queue] = [queue.Queue(maxsize=prefetch) for _ in range(workers)]

    def put(w: int, message: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                queues[w].put(message, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def run(w: int) -> None:
        try:
            for item in work(w):
                if not put(w, ("item", item)):
                    return
            put(w, ("done", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put(w, ("error", exc))

    threads = [threading.Thread(target=run, args=(w,), name=f"molmo-data-worker-{w}",
                                daemon=True) for w in range(workers)]
    for thread in threads:
        thread.start()
    try:
        live, turn = list(range(workers)), 0  # live[turn] is the next to deliver
        while live:
            w = live[turn]
            try:
                kind, value = queues[w].get(timeout=timeout_s or None)
            except queue.Empty:
                raise TimeoutError(f"data worker thread {w} sent nothing for {timeout_s} s "
                                   "(data.worker_timeout_s)") from None
            if kind == "error":
                raise value
            if kind == "done":
                del live[turn]  # the next live worker moves up to this turn
                turn = turn % len(live) if live else 0
                continue
            yield value
            turn = (turn + 1) % len(live)
    finally:
        stop.set()
        for thread in threads:  # a worker stuck past the timeout is left behind (a daemon)
            thread.join(timeout=timeout_s or None)
