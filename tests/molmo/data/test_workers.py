"""round_robin: thread workers delivered in the DataLoader's order, errors raised, threads
stopped on close."""

from __future__ import annotations

import queue
import threading
import types

import pytest
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from molmo.data import workers as thread_workers
from molmo.data.workers import round_robin
from pixmo.errors import PixmoError

WAIT_S = 60.0  # a generous bound on waits for worker threads; it fails the test, never paces it

LENGTHS = (3, 1, 5)  # uneven: workers run out at different turns


def items(w: int):
    return iter([f"w{w}-{i}" for i in range(LENGTHS[w])])


class Uneven(IterableDataset):
    def __iter__(self):
        return items(get_worker_info().id)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("molmo-data-worker")]


class WatchedQueue(queue.Queue):
    """round_robin's queue, reporting what its callers wait for: ``full`` is set
    once a ``put`` has timed out on a full queue (the worker is blocked, and
    stays blocked until the consumer takes an item), and ``gets`` lists the
    timeout of every ``get``."""

    made: list[WatchedQueue] = []

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.full, self.gets = threading.Event(), []
        WatchedQueue.made.append(self)

    def put(self, item, block=True, timeout=None) -> None:
        try:
            super().put(item, block, timeout)
        except queue.Full:
            self.full.set()
            raise

    def get(self, block=True, timeout=None):
        self.gets.append(timeout)
        return super().get(block, timeout)


@pytest.fixture
def watched(monkeypatch) -> list[WatchedQueue]:
    """The queues round_robin makes, in worker order."""
    WatchedQueue.made = []
    monkeypatch.setattr(thread_workers, "queue", types.SimpleNamespace(
        Queue=WatchedQueue, Full=queue.Full, Empty=queue.Empty))
    return WatchedQueue.made


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


def test_close_stops_workers_that_are_ahead(watched):
    produced = []

    def work(w: int):
        for i in range(10_000):
            produced.append((w, i))
            yield i

    batches = round_robin(work, 2, prefetch=3)
    assert [next(batches) for _ in range(4)] == [0, 0, 1, 1]
    for q in watched:  # a put may have timed out before the consumer took its items
        q.full.clear()
    # wait until both workers are as far ahead as they can get: blocked on a full queue
    assert all(q.full.wait(WAIT_S) for q in watched), "a worker never filled its queue"
    # Each worker has handed over 2 items, holds `prefetch` ready and one it is trying to put.
    assert len(produced) == 4 + 2 * (3 + 1)
    batches.close()
    assert not worker_threads()


class ParkedQueue(WatchedQueue):
    """Fake time for ``get``: the timeout runs out only when nothing can arrive, that is once
    ``parked`` is set (the worker waits on a gate) and the queue is empty; before that a
    ``get`` waits for the worker, however slow the machine is to start it."""

    parked = threading.Event()

    def get(self, block=True, timeout=None):
        self.gets.append(timeout)
        assert self.parked.wait(WAIT_S), "the worker never reached its gate"
        return queue.Queue.get(self, block=False)  # queue.Empty: the timeout ran out


def test_a_silent_worker_times_out(watched, monkeypatch):
    monkeypatch.setattr(ParkedQueue, "parked", threading.Event())
    monkeypatch.setattr(thread_workers.queue, "Queue", ParkedQueue)
    gate = threading.Event()

    def work(w: int):
        yield w
        ParkedQueue.parked.set()  # nothing more comes until the gate opens
        gate.wait()
        yield w

    batches = round_robin(work, 1, prefetch=1, timeout_s=0.2)
    assert next(batches) == 0
    with pytest.raises(TimeoutError, match="data worker thread 0 sent nothing for 0.2 s"):
        next(batches)
    assert watched[0].gets == [0.2, 0.2]  # every item is waited for with the timeout
    stuck = worker_threads()  # left behind: it was waiting on the gate, not on the queue
    assert len(stuck) == 1
    gate.set()
    for thread in stuck:
        thread.join(WAIT_S)
    assert not worker_threads()
