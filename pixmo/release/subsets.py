"""Readers for the released PixMo subsets: parquet rows to per-image annotations.

Each subset (and CountBenchQA) is described once in ``SUBSETS``: the released columns it
needs (pixmo.md section 1), where its image comes from (a URL, or bytes embedded in the
parquet), its sha256 policy, and a function that turns one row, given the decoded image,
into sample annotations or a ``Reject``. Coordinates follow the release: pixmo-points,
-points-eval and -point-explanations are percent (0-100) of the displayed image,
pixmo-count is pixels of the displayed image (Molmo loads images with EXIF transpose
before scaling points), and both come out as percent of the displayed image.

``pixmo.release.importer`` downloads the images and writes the dataset.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pixmo.errors import PixmoError
from pixmo.images import LoadedImage
from pixmo.points.annotations import ImageInfo, PointsConfig, validate_points
from pixmo.points.masks import check_masks, masks_from_arrow
from pixmo.raw import RawRecord
from pixmo.rejects import Reason, Reject

READ_STAGE = "import_read"
ANNOTATE_STAGE = "import_annotate"
RELEASED = "released"
_SHA256_HEX = frozenset("0123456789abcdef")
# released points are kept as released: no duplicate folding, no point limit
_RELEASED_POINTS = PointsConfig(max_points=None, duplicate_radius=0.0, merge_annotators=False,
                                coords_before_exif=False)


class Sha256Policy(str, enum.Enum):
    """What a mismatch between the released ``image_sha256`` and the bytes means."""

    STRICT = "strict"  # reject the rows (official loader's check_sha=True)
    FLAG = "flag"  # keep the image, set image.sha256_flagged (hosts that re-encode)
    NONE = "none"  # the subset has no hash column


@dataclass(frozen=True)
class Row:
    """One released row: where it is, which image it names and its other columns.

    ``image`` is the URL, or for embedded images the sha256 of the bytes;
    ``sha256`` is the released hash, if the subset has one.
    """

    source: str
    record: str
    image: str
    sha256: str | None
    data: dict[str, Any]


@dataclass
class Annotations:
    """What one row adds to its image's sample (lists of schema ``sample`` entries)."""

    captions: list[dict[str, Any]] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)
    qa: list[dict[str, Any]] = field(default_factory=list)
    transcripts: list[dict[str, Any]] = field(default_factory=list)


Annotate = Callable[[Row, LoadedImage], "Annotations | Reject"]


@dataclass(frozen=True)
class Subset:
    """One released subset: its columns, image source, hash policy and converter."""

    name: str
    columns: tuple[str, ...]  # released columns read (others are ignored)
    annotate: Annotate
    sha256_policy: Sha256Policy
    image_column: str = "image_url"  # "image" for embedded bytes (pixmo-docs)
    optional_columns: tuple[str, ...] = ()  # read when present (older revisions lack them)

    @property
    def embedded(self) -> bool:
        return self.image_column != "image_url"


def _reject(row: Row, reason: Reason, detail: str) -> Reject:
    return Reject(ANNOTATE_STAGE, reason, detail, row.source, row.record)


def _nonblank(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


# --------------------------------------------------------------------------- points


def _xy_list(value: Any) -> list[dict[str, Any]] | None:
    """Points as [{"x", "y"}] from a list of structs, a list of [x, y] pairs, or HF's
    "sequence of struct" layout {"x": [...], "y": [...]}; None if neither."""
    if value is None:
        return []
    if isinstance(value, dict) and set(value) == {"x", "y"}:
        xs, ys = value["x"] or [], value["y"] or []
        if len(xs) != len(ys):
            return None
        return [{"x": x, "y": y} for x, y in zip(xs, ys, strict=True)]
    if not isinstance(value, list):
        return None
    out = []
    for point in value:
        if isinstance(point, dict) and set(point) == {"x", "y"}:
            out.append(point)
        elif isinstance(point, (list, tuple)) and len(point) == 2:
            out.append({"x": point[0], "y": point[1]})
        else:
            return None
    return out


def _point_set(row: Row, image: LoadedImage, label: Any, points: Any, units: str,
               collection_method: str, count: Any = None) -> dict[str, Any] | Reject:
    """One label's released points, checked by ``pixmo.points.annotations`` and in percent."""
    xy = _xy_list(points)
    if xy is None:
        return _reject(row, Reason.INVALID_RECORD, f"points: not a list of (x, y): {points!r:.80}")
    if not isinstance(label, str):
        return _reject(row, Reason.INVALID_RECORD, f"label: expected a string, got {label!r:.40}")
    raw = RawRecord(row.source, row.record, {"image": row.image, "label": label, "points": xy,
                                             "units": units, "annotator": RELEASED,
                                             "collection_method": collection_method})
    info = ImageInfo(image.stored_width, image.stored_height, image.orientation)
    checked = validate_points(raw, info, _RELEASED_POINTS)
    if isinstance(checked, Reject):
        return Reject(ANNOTATE_STAGE, checked.reason, checked.detail, row.source, row.record)
    if count is not None and not (isinstance(count, int) and count >= 0):
        return _reject(row, Reason.INVALID_RECORD,
                       f"count: expected an integer >= 0, got {count!r}")
    return {"label": checked.label, "points": [[x, y] for x, y in checked.points],
            "count": len(checked.points) if count is None else count,
            "collection_method": collection_method, "annotators": []}


def _points_row(row: Row, image: LoadedImage) -> Annotations | Reject:
    """pixmo-points: one (image, label) per row, percent, pointing or counting."""
    method = row.data.get("collection_method")
    if method not in ("pointing", "counting"):
        return _reject(row, Reason.INVALID_RECORD,
                       f"collection_method: expected pointing or counting, got {method!r}")
    entry = _point_set(row, image, row.data.get("label"), row.data.get("points"), "percent",
                       method, row.data.get("count"))
    return entry if isinstance(entry, Reject) else Annotations(points=[entry])


def _points_eval_row(row: Row, image: LoadedImage) -> Annotations | Reject:
    """pixmo-points-eval: percent points and their instance masks (benchmark hits)."""
    entry = _point_set(row, image, row.data.get("label"), row.data.get("points"), "percent",
                       "pointing")
    if isinstance(entry, Reject):
        return entry
    masks = row.data.get("masks")  # run-length encoded by read_rows (masks_from_arrow)
    wrong = check_masks(masks, len(entry["points"]), image.height, image.width)
    if wrong is not None:
        return _reject(row, Reason.INVALID_RECORD, wrong)
    return Annotations(points=[{**entry, "masks": masks}])


def _count_row(row: Row, image: LoadedImage) -> Annotations | Reject:
    """pixmo-count: pixel points (absent in the eval splits) and a count."""
    entry = _point_set(row, image, row.data.get("label"), row.data.get("points"), "pixels",
                       "counting", row.data.get("count"))
    return entry if isinstance(entry, Reject) else Annotations(points=[entry])


def _countbench_row(row: Row, image: LoadedImage) -> Annotations | Reject:
    """CountBenchQA (vikhyatk/CountBenchQA: images embedded, no hash), the counting
    benchmark Molmo reports: a question and the number that answers it."""
    number = row.data.get("number")  # an int32 column: never a bool
    if not isinstance(number, int) or number < 0:
        return _reject(row, Reason.INVALID_RECORD, f"number: expected an integer >= 0, "
                       f"got {number!r:.40}")
    entry = _qa(row, row.data.get("question"), str(number), "countbenchqa")
    return entry if isinstance(entry, Reject) else Annotations(qa=[entry])


# --------------------------------------------------------------------------- text


def _cap_row(row: Row, image: LoadedImage) -> Annotations | Reject:
    """pixmo-cap: the released (LLM-written) caption and the raw transcripts it
    was written from (released text only: there is no audio behind them)."""
    caption = _nonblank(row.data.get("caption"))
    if caption is None:
        return _reject(row, Reason.INVALID_RECORD, "caption: missing or blank")
    transcripts = [{"text": text, "model": RELEASED, "backend": RELEASED}
                   for text in row.data.get("transcripts") or [] if _nonblank(text)]
    return Annotations(captions=[{"text": caption, "method": RELEASED}], transcripts=transcripts)


def _qa(row: Row, question: Any, answer: Any, source: str) -> dict[str, Any] | Reject:
    question = _nonblank(question)
    if question is None:
        return _reject(row, Reason.INVALID_RECORD, "question: missing or blank")
    if not isinstance(answer, str):
        return _reject(row, Reason.INVALID_RECORD, f"answer: expected a string, got {answer!r:.40}")
    return {"question": question, "answer": answer, "source": source}


def _ama_row(row: Row, image: LoadedImage) -> Annotations | Reject:
    entry = _qa(row, row.data.get("question"), row.data.get("answer"), "pixmo-ask-model-anything")
    return entry if isinstance(entry, Reject) else Annotations(qa=[entry])


def _cap_qa_row(row: Row, image: LoadedImage) -> Annotations | Reject:
    """pixmo-cap-qa: ``messages`` alternates user and assistant turns (what the
    official loader reads); rows of the revision without it use question/answer."""
    messages = row.data.get("messages")
    if not messages:
        entry = _qa(row, row.data.get("question"), row.data.get("answer"), "pixmo-cap-qa")
        return entry if isinstance(entry, Reject) else Annotations(qa=[entry])
    if len(messages) % 2:
        return _reject(row, Reason.INVALID_RECORD,
                       f"messages: {len(messages)} turns, expected user/assistant pairs")
    out = Annotations()
    for turn in range(0, len(messages), 2):
        entry = _qa(row, messages[turn], messages[turn + 1], "pixmo-cap-qa")
        if isinstance(entry, Reject):
            return entry
        out.qa.append(entry)
    return out


def _point_explanations_row(row: Row, image: LoadedImage) -> Annotations | Reject:
    """pixmo-point-explanations: the answer with inline point tags as QA, and each
    inline group (alt text, percent points) as a point set. Rows without
    ``parsed_response`` are rejected, as the official loader drops them."""
    if row.data.get("parsed_response") is None:
        return _reject(row, Reason.INVALID_RECORD,
                       "parsed_response: null (the official loader drops these rows)")
    entry = _qa(row, row.data.get("question"), row.data.get("response"),
                "pixmo-point-explanations")
    if isinstance(entry, Reject):
        return entry
    out = Annotations(qa=[entry])
    labels = row.data.get("alt_text") or []
    groups = row.data.get("points") or []
    if len(labels) != len(groups):
        return _reject(row, Reason.INVALID_RECORD,
                       f"alt_text has {len(labels)} entries but points has {len(groups)}")
    for label, points in zip(labels, groups, strict=True):
        point_set = _point_set(row, image, label, points, "percent", "pointing")
        if isinstance(point_set, Reject):
            return point_set
        out.points.append(point_set)
    return out


def _docs_row(row: Row, image: LoadedImage) -> Annotations | Reject:
    """pixmo-docs: a list of {question, answer} per rendered image."""
    questions = row.data.get("questions")
    if not isinstance(questions, list):
        return _reject(row, Reason.INVALID_RECORD, "questions: expected a list")
    out = Annotations()
    for item in questions:
        if not isinstance(item, dict):
            return _reject(row, Reason.INVALID_RECORD, "questions: expected {question, answer}")
        entry = _qa(row, item.get("question"), item.get("answer"), "pixmo-docs")
        if isinstance(entry, Reject):
            return entry
        out.qa.append(entry)
    return out


SUBSETS: dict[str, Subset] = {
    s.name: s
    for s in (
        Subset("pixmo-cap", ("caption", "transcripts"), _cap_row, Sha256Policy.NONE),
        Subset("pixmo-points", ("image_sha256", "points", "count", "label", "collection_method"),
               _points_row, Sha256Policy.STRICT),
        Subset("pixmo-points-eval", ("image_sha256", "label", "points", "masks"),
               _points_eval_row, Sha256Policy.STRICT),
        # released hashes are stale for every sampled image (pixmo.md 6): keep and flag
        Subset("pixmo-count", ("image_sha256", "count", "label"), _count_row,
               Sha256Policy.FLAG, optional_columns=("points",)),
        Subset("pixmo-ask-model-anything", ("image_sha256", "question", "answer"), _ama_row,
               Sha256Policy.STRICT),
        Subset("pixmo-cap-qa", ("question", "answer"), _cap_qa_row, Sha256Policy.NONE,
               optional_columns=("messages",)),
        Subset("pixmo-point-explanations",
               ("image_sha256", "question", "response", "parsed_response", "alt_text", "points"),
               _point_explanations_row, Sha256Policy.STRICT),
        Subset("pixmo-docs", ("image_id", "questions"), _docs_row, Sha256Policy.NONE,
               image_column="image"),
        Subset("countbenchqa", ("question", "number"), _countbench_row, Sha256Policy.NONE,
               image_column="image"),
    )
}


def get_subset(name: str) -> Subset:
    try:
        return SUBSETS[name]
    except KeyError:
        raise PixmoError(f"unknown subset {name!r}; expected one of {sorted(SUBSETS)}",
                         field="subset") from None


# --------------------------------------------------------------------------- reading


def _image_bytes(value: Any) -> bytes | None:
    """An HF ``Image`` cell ({bytes, path}) or raw bytes."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, bytes) and value else None


# columns read from Arrow by a function of the cell, not as Python lists (masks are large)
_ARROW: dict[str, Callable[[Any], Any]] = {"masks": masks_from_arrow}


def read_rows(subset: Subset, path: str | os.PathLike[str],
              embedded: Callable[[str, bytes], None] | None = None) -> Iterator[Row | Reject]:
    """Every row of one released parquet file, numbered from 1, in order.

    A file without the subset's columns is a user error (wrong subset or file).
    Embedded image bytes are handed to ``embedded(sha256, data)`` as they are read
    and the row names the image by that hash, so the file's images are never all
    in memory at once.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = os.fspath(path)
    if not os.path.isfile(source):
        raise PixmoError("parquet file not found", file=source)
    try:
        parquet = pq.ParquetFile(source)
    except pa.ArrowInvalid as exc:
        raise PixmoError(f"not a parquet file: {exc}", file=source) from exc
    present = set(parquet.schema_arrow.names)
    wanted = (subset.image_column, *subset.columns)
    missing = [c for c in wanted if c not in present]
    if missing:
        raise PixmoError(f"missing released column(s) {missing} of {subset.name}; "
                         f"the file has {sorted(present)}", file=source)
    columns = [*wanted, *(c for c in subset.optional_columns if c in present)]
    number = 0
    arrow = [c for c in _ARROW if c in columns]
    for batch in parquet.iter_batches(batch_size=64, columns=columns):
        for j, data in enumerate(batch.drop_columns(arrow).to_pylist()):
            data.update({c: _ARROW[c](batch.column(c)[j]) for c in arrow})
            number += 1
            record = str(number)
            image_value = data.pop(subset.image_column)
            expected = data.pop("image_sha256", None)
            if subset.embedded:
                content = _image_bytes(image_value)
                if content is None:
                    yield Reject(READ_STAGE, Reason.INVALID_RECORD,
                                 f"{subset.image_column}: no embedded image bytes", source, record)
                    continue
                image = hashlib.sha256(content).hexdigest()
                if embedded is not None:
                    embedded(image, content)
            else:
                if not isinstance(image_value, str) or not image_value.strip():
                    yield Reject(READ_STAGE, Reason.INVALID_RECORD,
                                 f"{subset.image_column}: missing or blank", source, record)
                    continue
                image = image_value.strip()
            if subset.sha256_policy is not Sha256Policy.NONE and expected is not None:
                expected = expected.strip().lower() if isinstance(expected, str) else expected
                if not (isinstance(expected, str) and len(expected) == 64
                        and set(expected) <= _SHA256_HEX):
                    yield Reject(READ_STAGE, Reason.INVALID_RECORD,
                                 f"image_sha256: not a sha256 hex digest: {expected!r:.80}",
                                 source, record)
                    continue
            yield Row(source, record, image, expected, data)
