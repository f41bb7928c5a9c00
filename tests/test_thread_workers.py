"""round_robin: thread workers delivered in the DataLoader's order, errors raised, threads
stopped on close."""

from __future__ import annotations

import threading
import time

import pytest
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from molmo.thread_workers import round_robin
from pixmo.errors import PixmoError

LENGTHS = (3, 1, 5)  # uneven: workers run out at different turns


def items(w: int):
    return iter([f"w{w}-{i}" for i in range(LENGTHS[w])])


class Uneven(IterableDataset):
    def __iter__(self):
        return items(get_worker_info().id)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("molmo-data-worker")]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_order_matches_the_dataloader_worker_processes():
    threads = list(round_robin(items, len(LENGTHS), prefetch=2))
    processes = list(DataLoader(Uneven(), batch_size=None, num_workers=len(LENGTHS)))
    assert threads == processes
    assert threads[:4] == ["w0-0", "w1-0", "w2-0", "w0-1"]
    assert len(threads) == sum(LENGTHS)
    assert not worker_threads()


def test_worker_error_is_raised_and_threads_stop():
    def work(w: int):
        yield w
        if w == 1:
            raise PixmoError("broken sample", file="a.tar", record="k1")
        yield from range(10, 1000)

    received = []
    with pytest.raises(PixmoError, match="a.tar.*k1.*broken sample"):
        for item in round_robin(work, 2, prefetch=1):
            received.append(item)
    assert received[:2] == [0, 1]
    assert not worker_threads()


def test_close_stops_workers_that_are_ahead():
    produced = []

    def work(w: int):
        for i in range(10_000):
            produced.append((w, i))
            yield i

    batches = round_robin(work, 2, prefetch=3)
    assert [next(batches) for _ in range(4)] == [0, 0, 1, 1]
    time.sleep(0.3)  # let the workers run as far ahead as they can
    # Each worker holds at most `prefetch` items ready plus the one it is trying to put.
    assert len(produced) <= 4 + 2 * (3 + 1)
    batches.close()
    assert not worker_threads()


def test_a_silent_worker_times_out():
    gate = threading.Event()

    def work(w: int):
        yield w
        gate.wait()
        yield w

    batches = round_robin(work, 1, prefetch=1, timeout_s=1.0)
    assert next(batches) == 0
    with pytest.raises(TimeoutError, match="data worker thread 0 sent nothing for 1.0 s"):
        next(batches)
    stuck = worker_threads()  # left behind: it was waiting on the gate, not on the queue
    gate.set()
    for thread in stuck:
        thread.join(timeout=5)
    assert not worker_threads()
