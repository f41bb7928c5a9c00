"""molmo/data/tasks.py: the conversations one sample yields, their prompts, styles, images."""

from __future__ import annotations

import io
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from molmo.data.tasks import (
    CAPTION_TEMPLATES,
    NO_POINTING_PREFIXES,
    TRANSCRIPT_TEMPLATES,
    TaskConfig,
    build_example,
    load_image,
)
from molmo.preprocess.chat import ChatConfig, format_messages
from pixmo.dataset.format import ShardSample
from pixmo.errors import PixmoError
from pixmo.points.prompts import POINT_COUNT_TEMPLATES, POINTING_TEMPLATES
from pixmo.points.text import points_to_text
from tests.conftest import make_sample


def rich_sample(i: int = 0) -> ShardSample:
    """A sample with every annotation kind: 1 caption, 2 transcripts, 2 point sets, 2 QA."""
    sample = make_sample(i)
    obj = sample.json
    obj["transcripts"] = [
        {"text": f"um so this is square {i} I think", "annotator": "a1",
         "audio_sha256": "a" * 64, "duration_s": 3.5, "language": "en", "model": "tiny"},
        {"text": "   ", "annotator": "a2", "audio_sha256": "b" * 64, "duration_s": 0.5,
         "language": "en", "model": "tiny"},
    ]
    obj["points"].append({"label": "Corner", "points": [[0.0, 0.0], [99.5, 99.5]], "count": 2,
                          "collection_method": "counting", "annotators": ["a2"]})
    obj["qa"] = [{"question": "How many squares are there?", "answer": "One."},
                 {"question": "What colour is it?", "answer": "Mostly blue."}]
    return sample


def _template_match(question: str, templates: tuple[str, ...], label: str) -> bool:
    return question in {t.format(label=label) for t in templates}


def test_every_task_one_conversation_per_annotation():
    sample = rich_sample(3)
    ex = build_example(sample, TaskConfig(), ChatConfig(), np.random.default_rng(0))
    assert ex.key == sample.key
    kinds = Counter("points" if t in ("pointing", "point_count") else t for t in ex.tasks)
    assert kinds == {"long_caption": 1, "transcript": 1, "points": 2, "qa": 2}
    by_task: dict[str, list] = {}
    for task, conv in zip(ex.tasks, ex.conversations, strict=True):
        assert len(conv.messages) == 2
        by_task.setdefault(task, []).append(conv)
    (caption,) = by_task["long_caption"]
    assert caption.messages[0] in CAPTION_TEMPLATES
    assert caption.messages[1] == "A plain square of colour number 3."
    (transcript,) = by_task["transcript"]  # the blank transcript is never chosen
    assert transcript.messages[0] in TRANSCRIPT_TEMPLATES
    assert transcript.messages[1] == "um so this is square 3 I think"
    assert transcript.style == "transcript"  # not a demo style: always tagged
    point_sets = {ps["label"].lower(): ps for ps in sample.json["points"]}
    for task in ("pointing", "point_count"):
        for conv in by_task.get(task, []):
            label = "square" if "square" in conv.messages[0] else "corner"
            ps = point_sets[label]
            pts = [(p[0], p[1]) for p in ps["points"]]
            count = task == "point_count"
            assert conv.messages[1] == points_to_text(pts, label, count=count)
            templates = POINT_COUNT_TEMPLATES if count else POINTING_TEMPLATES
            assert _template_match(conv.messages[0], templates, label)
    questions = [c.messages[0] for c in by_task["qa"]]
    how_many = [q for q in questions if "How many squares" in q]
    assert len(how_many) == 1
    assert any(how_many[0] == p + "How many squares are there?" for p in NO_POINTING_PREFIXES)
    assert "What colour is it?" in questions


def test_deterministic_given_the_generator_and_order_shuffled():
    sample = rich_sample(1)
    a = build_example(sample, TaskConfig(), ChatConfig(), np.random.default_rng(5))
    b = build_example(sample, TaskConfig(), ChatConfig(), np.random.default_rng(5))
    assert a == b
    orders = {build_example(sample, TaskConfig(), ChatConfig(), np.random.default_rng(s)).tasks
              for s in range(20)}
    assert len(orders) > 1
    fixed = TaskConfig(shuffle_conversations=False, tasks=("long_caption", "transcript", "qa"))
    ex = build_example(sample, fixed, ChatConfig(), np.random.default_rng(0))
    assert ex.tasks == ("long_caption", "transcript", "qa", "qa")


def test_demo_styles_tagged_about_ten_percent_of_the_time():
    sample = rich_sample(2)
    cfg = TaskConfig(tasks=("long_caption",))
    tagged = sum(
        build_example(sample, cfg, ChatConfig(), np.random.default_rng(s)).conversations[0].style
        == "long_caption" for s in range(2000))
    assert abs(tagged / 2000 - 0.1) < 0.03


def test_point_count_share_and_single_task():
    sample = rich_sample(4)
    cfg = TaskConfig(tasks=("pointing", "point_count"), point_count_prob=0.25)
    tasks = [t for s in range(1000)
             for t in build_example(sample, cfg, ChatConfig(), np.random.default_rng(s)).tasks]
    assert abs(tasks.count("point_count") / len(tasks) - 0.25) < 0.04
    only = build_example(sample, TaskConfig(tasks=("point_count",)), ChatConfig(),
                         np.random.default_rng(0))
    assert only.tasks == ("point_count", "point_count")
    assert all(c.messages[1].startswith(("Counting the", "There are none.")) for c in
               only.conversations)


def test_length_hint_prompts_for_caption_pretraining():
    chat = ChatConfig(message_format="none", length_hint_drop_prob=0.0)
    cfg = TaskConfig(tasks=("long_caption", "transcript"), caption_prompt="length_hint",
                     shuffle_conversations=False)
    ex = build_example(rich_sample(5), cfg, chat, np.random.default_rng(0))
    caption, transcript = ex.conversations
    assert re.fullmatch(r"long_caption \d+:", caption.messages[0])
    assert re.fullmatch(r"transcript \d+:", transcript.messages[0])
    assert caption.style is None and transcript.style is None
    assert format_messages(caption, chat)[0] == " " + caption.messages[0]


def test_no_enabled_annotation_gives_no_conversation():
    sample = make_sample(0)  # a caption and a point set only
    ex = build_example(sample, TaskConfig(tasks=("qa", "transcript")), ChatConfig(),
                       np.random.default_rng(0))
    assert ex.conversations == ()


def test_schema_violation_names_key_and_field():
    sample = make_sample(0)
    del sample.json["points"][0]["label"]
    with pytest.raises(PixmoError, match=rf"record {sample.key}.*points\[0\]"):
        build_example(sample, TaskConfig(), ChatConfig(), np.random.default_rng(0))


def test_task_config_rejects_unknown_task():
    with pytest.raises(ValueError, match="TaskConfig.tasks"):
        TaskConfig(tasks=("captioning",))


def _jpeg_with_orientation(size: tuple[int, int], orientation: int) -> bytes:
    image = Image.new("RGB", size, (200, 10, 10))
    image.paste((10, 10, 200), (0, 0, size[0] // 2, size[1]))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif, quality=95)
    return buf.getvalue()


def test_load_image_applies_exif_orientation():
    sample = make_sample(0)
    sample.files = {"jpg": _jpeg_with_orientation((40, 20), 6)}  # 6: rotate 90 clockwise
    image = load_image(sample)
    assert image.mode == "RGB"
    assert image.size == (20, 40)
    top = np.asarray(image)[2, 10]
    assert top[2] > 150 and top[0] < 60  # the stored left half (blue) is now on top


def test_load_image_limits_and_errors():
    sample = make_sample(0)  # 32 x 24 PNG
    assert load_image(sample).size == (32, 24)
    with pytest.raises(PixmoError, match="more than max_pixels 100"):
        load_image(sample, max_pixels=100)
    sample.files = {"png": b"\x89PNG not really"}
    with pytest.raises(PixmoError, match=rf"record {sample.key}, field image: cannot decode"):
        load_image(sample)
    sample.files = {"txt": b"hello"}
    with pytest.raises(PixmoError, match="no image member"):
        load_image(sample)
