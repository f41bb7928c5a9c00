"""Collection tasks: which caption and pointing tasks exist for a folder of images, and who
holds which one (leases that expire on an injected clock).

A task id is derived from what the task is (kind, image, speaker slot or label), so the same
folder gives the same ids after a restart; records carry it (``session_id`` of a caption
session, ``annotation_id`` of a pointing annotation), so finished tasks are known again from
the files alone. An annotator never gets the same image twice for the same kind (for
pointing: the same image and label), so the N speakers of an image are N people.
"""

from __future__ import annotations

import hashlib
import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass(frozen=True)
class Task:
    """One unit of work: a caption session for a speaker slot, or one pointing label."""

    task_id: str
    kind: str  # caption | points
    image: str  # as records name it: "images/NAME"
    label: str | None = None  # points: the label asked for; None: the annotator names one

    @property
    def sight(self) -> tuple[str, str, str | None]:
        """What an annotator must not be given twice."""
        return (self.kind, self.image, self.label if self.kind == "points" else None)


def task_id(kind: str, image: str, slot: str) -> str:
    digest = hashlib.sha256(f"{kind}\0{image}\0{slot}".encode()).hexdigest()[:16]
    return f"{kind[0]}-{digest}"


def make_tasks(images: Sequence[str], labels: Sequence[str], speakers: int) -> list[Task]:
    """Every task of a folder, image by image: ``speakers`` caption sessions, then one pointing
    task per label (or one where the annotator names what they point at)."""
    tasks = []
    for image in images:
        tasks += [Task(task_id("caption", image, str(slot)), "caption", image)
                  for slot in range(speakers)]
        tasks += [Task(task_id("points", image, label), "points", image, label)
                  for label in labels]
        if not labels:
            tasks.append(Task(task_id("points", image, ""), "points", image))
    return tasks


@dataclass
class _State:
    holder: str | None = None
    expires: float = 0.0
    done_by: str | None = None
    record: dict | None = None


@dataclass
class TaskBoard:
    """Hands out tasks one annotator at a time; a lease not finished in ``lease_s`` is
    released. Thread-safe: the app calls it from many request threads.

    Handing out a task looks at the annotator's own lease, then walks only the tasks nobody
    finished, in folder order, and progress is kept as counts: a request costs the same with
    a hundred images or a million, however far the collection has come.
    """

    tasks: list[Task]
    lease_s: float
    clock: Clock
    _state: dict[str, _State] = field(init=False)
    _by_id: dict[str, Task] = field(init=False)
    _seen: dict[str, set] = field(init=False)
    lock: threading.RLock = field(init=False, default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self._by_id = {t.task_id: t for t in self.tasks}
        self._order = {t.task_id: n for n, t in enumerate(self.tasks)}
        self._state = {t.task_id: _State() for t in self.tasks}
        self._open = list(range(len(self.tasks)))  # positions of unfinished tasks, ascending
        self._held: dict[str, str] = {}  # annotator -> the task last leased to them
        self._done: Counter[str] = Counter()  # annotator -> tasks finished
        self._seen = {}

    def get(self, tid: str) -> Task | None:
        return self._by_id.get(tid)

    def _live(self, st: _State) -> bool:
        return st.holder is not None and self.clock() < st.expires

    def _mark_open(self, tid: str, is_open: bool) -> None:
        n = self._order[tid]
        i = bisect_left(self._open, n)
        present = i < len(self._open) and self._open[i] == n
        if is_open and not present:
            self._open.insert(i, n)
        elif not is_open and present:
            del self._open[i]

    def _lease(self, tid: str, annotator: str) -> None:
        st = self._state[tid]
        st.holder, st.expires = annotator, self.clock() + self.lease_s
        self._held[annotator] = tid

    def finish(self, tid: str, annotator: str, record: dict) -> None:
        """Mark a task done (a record was written for it; also when read back on start)."""
        with self.lock:
            st = self._state[tid]
            if st.done_by is not None:  # a redo read back on start
                self._done[st.done_by] -= 1
            st.holder, st.done_by, st.record = None, annotator, record
            self._done[annotator] += 1
            self._mark_open(tid, False)
            self._seen.setdefault(annotator, set()).add(self._by_id[tid].sight)

    def saw(self, annotator: str, kind: str, image: str, label: str | None) -> None:
        """A record not made by a task of this board still counts as seen."""
        with self.lock:
            key = (kind, image, label if kind == "points" else None)
            self._seen.setdefault(annotator, set()).add(key)

    def reopen(self, tid: str, annotator: str) -> None:
        """Give a finished task back to its annotator to redo (its transcript failed QC)."""
        with self.lock:
            st = self._state[tid]
            if st.done_by == annotator:
                st.done_by, st.record = None, None
                self._done[annotator] -= 1
                self._mark_open(tid, True)
                self._lease(tid, annotator)

    def next_task(self, annotator: str) -> Task | None:
        """The task this annotator holds, else the first open one they have not seen."""
        with self.lock:
            held = self._held.get(annotator)
            if held is not None:
                st = self._state[held]
                if st.holder == annotator and self._live(st) and st.done_by is None:
                    self._lease(held, annotator)
                    return self._by_id[held]
            seen = self._seen.setdefault(annotator, set())
            for n in self._open:
                task = self.tasks[n]
                if not self._live(self._state[task.task_id]) and task.sight not in seen:
                    self._lease(task.task_id, annotator)
                    return task
            return None

    def claim(self, tid: str, annotator: str) -> tuple[str, dict | None]:
        """May ``annotator`` submit for ``tid`` now? ``ok``, ``done`` (their record, which
        is returned again), ``unknown``, ``taken`` (another's lease), ``conflict``."""
        with self.lock:
            task = self._by_id.get(tid)
            if task is None:
                return "unknown", None
            st = self._state[tid]
            if st.done_by is not None:
                return ("done", st.record) if st.done_by == annotator else ("conflict", None)
            if self._live(st) and st.holder != annotator:
                return "taken", None
            if st.holder != annotator and task.sight in self._seen.get(annotator, set()):
                return "conflict", None
            return "ok", None

    def progress(self, annotator: str) -> dict[str, int]:
        """Tasks this annotator finished, and tasks not finished by anyone."""
        with self.lock:
            return {"done": self._done[annotator], "left": len(self._open)}
