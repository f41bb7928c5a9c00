"""Collection tasks: stable ids, one holder at a time, leases on an injected clock, and no
annotator given the same image twice for one kind."""

from __future__ import annotations

from pixmo.collect.tasks import TaskBoard, make_tasks, task_id

IMAGES = ["images/a.png", "images/b.png"]


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def board(labels=(), speakers=2, lease_s=10.0) -> tuple[TaskBoard, Clock]:
    clock = Clock()
    return TaskBoard(make_tasks(IMAGES, labels, speakers), lease_s, clock), clock


def test_tasks_are_the_same_for_the_same_folder():
    tasks = make_tasks(IMAGES, ("cup", "dog"), 2)
    assert [(t.kind, t.image, t.label) for t in tasks] == [
        ("caption", "images/a.png", None), ("caption", "images/a.png", None),
        ("points", "images/a.png", "cup"), ("points", "images/a.png", "dog"),
        ("caption", "images/b.png", None), ("caption", "images/b.png", None),
        ("points", "images/b.png", "cup"), ("points", "images/b.png", "dog")]
    assert tasks == make_tasks(IMAGES, ("cup", "dog"), 2)
    assert len({t.task_id for t in tasks}) == 8
    assert tasks[0].task_id == task_id("caption", "images/a.png", "0")
    assert [t.label for t in make_tasks(IMAGES, (), 1) if t.kind == "points"] == [None, None]


def test_one_holder_at_a_time_until_the_lease_runs_out():
    b, clock = board(speakers=1)
    first = b.next_task("ann")
    assert b.next_task("ann") == first
    assert b.claim(first.task_id, "bob") == ("taken", None)
    other = b.next_task("bob")
    assert other != first
    clock.now = 10.0  # leases end at 10.0: expired
    assert b.claim(first.task_id, "bob") == ("ok", None)
    assert b.next_task("cat") == first
    assert b.claim(first.task_id, "ann") == ("taken", None)


def test_a_finished_task_is_done_for_good_and_only_its_author_gets_it_back():
    b, _ = board()
    t = b.next_task("ann")
    b.finish(t.task_id, "ann", {"r": 1})
    assert b.claim(t.task_id, "ann") == ("done", {"r": 1})
    assert b.claim(t.task_id, "bob") == ("conflict", None)
    assert b.claim("c-nothing", "ann") == ("unknown", None)
    assert b.progress("ann") == {"done": 1, "left": 5}


def test_never_the_same_image_twice_for_one_kind():
    b, _ = board(labels=("cup",), speakers=2)
    got = []
    while (t := b.next_task("ann")) is not None:
        got.append(t)
        b.finish(t.task_id, "ann", {})
    assert [(t.kind, t.image) for t in got] == [
        ("caption", "images/a.png"), ("points", "images/a.png"),
        ("caption", "images/b.png"), ("points", "images/b.png")]
    second = b.next_task("bob")
    assert (second.kind, second.image) == ("caption", "images/a.png")
    # a caption task of an image ann spoke about is not hers to take
    assert b.claim(second.task_id, "ann") == ("taken", None)
    b.finish(second.task_id, "bob", {})
    assert b.claim(make_tasks(IMAGES, ("cup",), 2)[4].task_id, "ann") == ("conflict", None)


def test_records_made_elsewhere_count_as_seen():
    b, _ = board(speakers=1)
    b.saw("ann", "caption", "images/a.png", None)
    assert b.next_task("ann").kind == "points"


def test_a_reopened_task_goes_back_to_its_author():
    b, clock = board(speakers=1)
    t = b.next_task("ann")
    b.finish(t.task_id, "ann", {})
    b.reopen(t.task_id, "bob")  # not bob's: nothing happens
    assert b.claim(t.task_id, "ann")[0] == "done"
    b.reopen(t.task_id, "ann")
    assert b.next_task("ann") == t
    assert b.claim(t.task_id, "bob") == ("taken", None)
    clock.now = 100.0
    assert b.next_task("bob") == t  # a redo not done in time is anyone's



class Looked(list):
    """A task list that counts the tasks read from it."""

    looked = 0

    def __getitem__(self, i):  # noqa: ANN001, ANN204
        self.looked += 1
        return super().__getitem__(i)

    def __iter__(self):  # noqa: ANN204
        for task in super().__iter__():
            self.looked += 1
            yield task


def test_handing_out_a_task_looks_at_a_few_tasks_not_the_folder():
    tasks = Looked(make_tasks([f"images/{n:05d}.png" for n in range(5000)], ("cup",), 1))
    b = TaskBoard(tasks, 10.0, Clock())
    for n in range(4000):  # most of the folder done by others
        b.finish(tasks[n].task_id, f"ann{n % 7}", {})
    first = b.next_task("bob")
    tasks.looked = 0
    assert b.next_task("bob") == first == tasks[4000]  # bob's own lease, renewed
    assert tasks.looked == 1  # the one read by this assertion
    tasks.looked = 0
    assert b.next_task("cat") is tasks[4001]  # past bob's lease, to the next open task
    assert tasks.looked == 3
    assert b.progress("ann3") == {"done": 571, "left": 6000}


def test_progress_counts_follow_finishes_redos_and_reopens():
    b, _ = board(speakers=1)
    t = b.next_task("ann")
    b.finish(t.task_id, "ann", {})
    b.finish(t.task_id, "ann", {"redo": 2})  # a redo read back on start counts once
    assert b.progress("ann") == {"done": 1, "left": 3}
    b.reopen(t.task_id, "ann")
    assert b.progress("ann") == {"done": 0, "left": 4}
    assert b.next_task("ann") == t
    b.finish(t.task_id, "ann", {})
    other = b.next_task("bob")
    b.finish(other.task_id, "bob", {})
    assert (b.progress("ann"), b.progress("bob")) == ({"done": 1, "left": 2},
                                                      {"done": 1, "left": 2})
    assert b.next_task("ann").task_id not in (t.task_id, other.task_id)
