"""The collection itself, without HTTP: images offered, tasks handed out, submissions checked
and written into the raw input contract (``captions.jsonl``, ``points.jsonl``, ``audio/``).

Every check a submission can fail is a ``CollectError`` carrying the HTTP status the app
answers with, so the rules live here and the app only translates. A record is checked
against its schema, its audio written and fsynced, then the record appended and fsynced,
all before it is acknowledged; a resubmitted task returns the record already written.
Submissions of one task are written one at a time (a racing duplicate finds the record),
under one of ``WRITE_LOCKS`` locks chosen by the task id: other tasks' submissions are written
alongside, not queued behind each other's fsyncs.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixmo.collect.config import MAX_LABEL_CHARS, CollectConfig
from pixmo.collect.store import AudioFolder, RecordLog, Repair, audio_extension
from pixmo.collect.tasks import Clock, Task, TaskBoard, make_tasks
from pixmo.collect.transcripts import TranscriptWorker
from pixmo.errors import PixmoError
from pixmo.images import ImageConfig, ImageRejected, load_image
from pixmo.schema import check
from pixmo.speech.audio import Audio, AudioTooLong, decode_audio

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_REDO = re.compile(r"^(?P<task>.+)-r(?P<n>[0-9]+)$")
WRITE_LOCKS = 64


class CollectError(Exception):
    """A submission or request refused, with the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    ref: str  # "images/NAME", as records name it
    sha256: str
    width: int  # stored pixels: the units of the contract's points
    height: int
    orientation: int  # EXIF orientation: the page shows the image turned, clicks map back
    media_type: str


def write_lock_index(tid: str) -> int:
    """The write lock of a task: the same in every process (``hash`` of a str is not)."""
    return zlib.crc32(tid.encode()) % WRITE_LOCKS


def index_images(raw_dir: Path, limits: ImageConfig) -> tuple[dict[str, ImageInfo], list[str]]:
    """Every usable image under ``raw_dir/images`` by its name there, and one line per file
    that is not usable (never silently left out)."""
    root = raw_dir / "images"
    if not root.is_dir():
        raise PixmoError("no images/ folder", file=str(raw_dir))
    inside = root.resolve()
    found: dict[str, ImageInfo] = {}
    skipped = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if not path.resolve().is_relative_to(inside):  # only what is in images/ is served
            skipped.append(f"images/{name}: a link to a file outside images/")
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"images/{name}: not a .jpg, .png or .webp file")
            continue
        try:
            img = load_image(name, root, limits)  # the size is checked before a byte is read
        except ImageRejected as exc:
            skipped.append(f"images/{name}: {exc.detail}")
            continue
        found[name] = ImageInfo(path, f"images/{name}", img.sha256, img.stored_width,
                                img.stored_height, img.orientation, f"image/{img.format}")
    return found, skipped


@dataclass
class Collector:
    """One raw directory being annotated."""

    raw_dir: Path
    config: CollectConfig
    clock: Clock
    transcribe: bool = True
    images: dict[str, ImageInfo] = field(init=False)
    skipped: list[str] = field(init=False)
    repairs: list[Repair] = field(init=False)

    def __post_init__(self) -> None:
        self.raw_dir = Path(self.raw_dir)
        self.images, self.skipped = index_images(self.raw_dir, self.config.images)
        for line in self.skipped:
            log.warning("not offered: %s", line)
        self._by_ref = {info.ref: info for info in self.images.values()}
        refs = [info.ref for info in self.images.values()]
        self.board = TaskBoard(make_tasks(refs, self.config.labels,
                                          self.config.speakers_per_image),
                               self.config.lease_s, self.clock)
        self.captions = RecordLog(self.raw_dir / "captions.jsonl")
        self.points = RecordLog(self.raw_dir / "points.jsonl")
        self.repairs = [r for r in (self.captions.repair, self.points.repair) if r is not None]
        self.audio = AudioFolder(self.raw_dir / "audio")
        self._attempts: dict[str, int] = {}  # caption task -> recordings written
        self._authors: dict[str, str] = {}  # caption task -> who recorded the latest
        self._write_locks = [threading.Lock() for _ in range(WRITE_LOCKS)]
        self._restore()
        self.worker = (TranscriptWorker(self.config.speech, on_reject=self.board.reopen)
                       if self.transcribe else None)

    def _restore(self) -> None:
        """Finished tasks, from the records already on disk."""
        for kind, records, id_field in (("caption", self.captions, "session_id"),
                                        ("points", self.points, "annotation_id")):
            for rec in records.records():
                rid, who = str(rec.get(id_field, "")), str(rec.get("annotator", ""))
                redo = _REDO.match(rid)
                tid = rid if self.board.get(rid) is not None or not redo else redo["task"]
                task = self.board.get(tid)
                if task is not None and task.kind == kind:
                    self._attempts[tid] = self._attempts.get(tid, 0) + 1
                    self._authors[tid] = who
                    self.board.finish(tid, who, rec)
                else:
                    self.board.saw(who, kind, str(rec.get("image", "")), rec.get("label"))

    def _write_lock(self, tid: str) -> threading.Lock:
        return self._write_locks[write_lock_index(tid)]

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        self.captions.close()
        self.points.close()

    # ------------------------------------------------------------------ tasks

    def next_task(self, annotator: str) -> dict[str, Any] | None:
        task = self.board.next_task(annotator)
        if task is None:
            return None
        info = self._by_ref[task.image]
        out = {"task_id": task.task_id, "kind": task.kind, "image": task.image,
               "width": info.width, "height": info.height, "orientation": info.orientation,
               "min_speech_s": self.config.min_speech_s,
               "progress": self.board.progress(annotator)}
        if task.kind == "points":
            out["label"] = task.label
        return out

    def image(self, name: str) -> ImageInfo:
        """An image the app may serve: only names found under ``images/`` at start."""
        info = self.images.get(name)
        if info is None:
            raise CollectError(404, f"no image {name!r}")
        if not info.path.is_file():
            raise CollectError(404, f"image {name!r} is no longer in images/")
        return info

    def _claim(self, tid: Any, annotator: str, kind: str) -> tuple[Task, dict | None]:
        """The task a submission names, or the record it already has (a resubmission)."""
        if not isinstance(tid, str) or not tid:
            raise CollectError(400, "task_id is missing")
        state, record = self.board.claim(tid, annotator)
        task = self.board.get(tid)
        if state == "unknown" or task is None:
            raise CollectError(404, f"no task {tid!r}")
        if task.kind != kind:
            raise CollectError(400, f"task {tid} is a {task.kind} task")
        if state == "taken":
            raise CollectError(403, f"task {tid} is assigned to another annotator")
        if state == "conflict":
            raise CollectError(409, f"task {tid} was done by another annotator, or you "
                               "already did this image")
        return task, record

    # ------------------------------------------------------------------ captions

    def check_audio(self, data: bytes) -> tuple[str, Audio]:
        """Decode an upload before anything is written: audio of the accepted length; returns
        its container's extension and the decoded audio."""
        if len(data) > self.config.max_audio_bytes:
            raise CollectError(413, f"audio has {len(data)} bytes, more than "
                               f"{self.config.max_audio_bytes}")
        extension = audio_extension(data)
        if extension is None:
            raise CollectError(415, "not an audio file (wav, ogg, webm, flac, mp3, m4a)")
        try:
            audio = decode_audio(data, source="upload", cfg=self.config.audio)
        except PixmoError as exc:
            raise CollectError(413 if isinstance(exc, AudioTooLong) else 422,
                               exc.reason) from exc
        if audio.duration_s < self.config.min_speech_s:
            raise CollectError(422, f"recording lasts {audio.duration_s:.1f} s, less than "
                               f"{self.config.min_speech_s:g} s")
        return extension, audio

    def submit_caption(self, annotator: str, tid: Any, data: bytes) -> tuple[int, dict]:
        """Write one caption session; (201, record), or (200, record) for a task already
        submitted by this annotator."""
        task, record = self._claim(tid, annotator, "caption")
        if record is not None:
            return 200, record
        extension, audio = self.check_audio(data)
        with self._write_lock(task.task_id):
            task, record = self._claim(tid, annotator, "caption")  # a racing duplicate
            if record is not None:
                return 200, record
            attempt = self._attempts.get(task.task_id, 0)
            session_id = task.task_id if attempt == 0 else f"{task.task_id}-r{attempt + 1}"
            info = self._by_ref[task.image]
            record = {"image": task.image, "image_sha256": info.sha256,
                      "audio": f"audio/{session_id}.{extension}", "annotator": annotator,
                      "session_id": session_id}
            self._check_schema("caption_session", record)
            self.audio.write(session_id, data, extension)
            self.captions.append(record)
            self._attempts[task.task_id] = attempt + 1
            self._authors[task.task_id] = annotator
            self.board.finish(task.task_id, annotator, record)
        if self.worker is not None:
            self.worker.submit(task.task_id, annotator, session_id,
                               self.raw_dir / record["audio"], audio)
        return 201, record

    def transcript(self, annotator: str, tid: str) -> dict[str, Any]:
        """The transcript of this annotator's latest recording for a task."""
        task = self.board.get(tid)
        if task is None or task.kind != "caption":
            raise CollectError(404, f"no caption task {tid!r}")
        if self._authors.get(tid) != annotator:
            raise CollectError(404, f"no recording of yours for task {tid}")
        found = self.worker.result(tid) if self.worker is not None else None
        if found is None:
            return {"status": "off" if self.worker is None else "unknown"}
        found["redo"] = found["status"] == "rejected"
        return found

    # ------------------------------------------------------------------ points

    def submit_points(self, annotator: str, body: Any) -> tuple[int, dict]:
        """Write one pointing annotation; (201, record) or (200, record) as for captions."""
        if not isinstance(body, dict):
            raise CollectError(400, "expected a JSON object")
        task, record = self._claim(body.get("task_id"), annotator, "points")
        if record is not None:
            return 200, record
        info = self._by_ref[task.image]
        label, points = self._check_points(task, info, body)
        with self._write_lock(task.task_id):
            task, record = self._claim(task.task_id, annotator, "points")
            if record is not None:
                return 200, record
            record = {"image": task.image, "image_sha256": info.sha256, "label": label,
                      "points": points, "units": "pixels", "annotator": annotator,
                      "collection_method": "pointing", "annotation_id": task.task_id}
            self._check_schema("point_annotation", record)
            self.points.append(record)
            self.board.finish(task.task_id, annotator, record)
        return 201, record

    def _check_points(self, task: Task, info: ImageInfo, body: dict) -> tuple[str, list]:
        label, points, units = body.get("label"), body.get("points"), body.get("units")
        if not isinstance(label, str) or not isinstance(points, list):
            raise CollectError(400, "label (a string) and points (a list) are required")
        label = " ".join(label.split())
        if not label or len(label) > MAX_LABEL_CHARS:
            raise CollectError(422, f"label must have 1-{MAX_LABEL_CHARS} characters")
        if task.label is not None and label != task.label:
            raise CollectError(422, f"this task asks for {task.label!r}, not {label!r}")
        if units != "pixels":
            raise CollectError(422, f"units must be 'pixels', got {units!r}")
        if len(points) > self.config.max_points:
            raise CollectError(413, f"{len(points)} points, more than "
                               f"{self.config.max_points}")
        out = []
        for n, p in enumerate(points):
            ok = isinstance(p, dict) and set(p) == {"x", "y"} and all(
                isinstance(p[k], (int, float)) and not isinstance(p[k], bool)
                and math.isfinite(p[k]) for k in ("x", "y"))
            if not ok:
                raise CollectError(400, f"points[{n}] must be {{x, y}} numbers")
            if not (0 <= p["x"] <= info.width and 0 <= p["y"] <= info.height):
                raise CollectError(422, f"points[{n}] lies outside the {info.width}x"
                                   f"{info.height} image")
            out.append({"x": round(float(p["x"]), 2), "y": round(float(p["y"]), 2)})
        return label, out

    @staticmethod
    def _check_schema(name: str, record: dict) -> None:
        violation = check(name, record)
        if violation is not None:
            raise CollectError(422, f"{violation.field or 'record'}: {violation.message}")

