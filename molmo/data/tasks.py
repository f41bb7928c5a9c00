"""From a PixMo sample to one Molmo training example: tasks, prompts, style tags.

One sample is one image, so it becomes one example: every annotation of the enabled tasks is a
conversation of its own, and the preprocessor packs them after a single image block with their own
``subsegment_ids`` (conversations never attend to each other) and, under
``PreprocessConfig.conversation_weighting="root_subsegments"``, loss weight sqrt(1/k) for k
conversations. Answers carry the loss, prompts do not (``molmo/preprocess/chat.py``).

Tasks (the styles of the official recipe, reference ``molmo.md`` section 6):
``long_caption`` one caption of the sample; ``transcript`` one transcript; ``pointing`` and
``point_count`` one conversation per point set; ``qa`` one conversation per question. Caption
pre-training prompts are the bare length hint (``"long_caption 73:"``); fine-tuning prompts are
templates with the style tag chosen by ``choose_style_tag`` (demo styles tagged 10% of the time).

Every random choice comes from the ``numpy.random.Generator`` passed in, which the loader seeds
from (seed, dataset, epoch, shard, index), so an example never depends on which worker built it.
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from molmo.preprocess.chat import ChatConfig, Conversation, choose_style_tag, length_hint_prompt
from pixmo.config import between, check_fields, one_of, subset_of
from pixmo.dataset.format import IMAGE_EXTENSIONS, ShardSample
from pixmo.errors import PixmoError
from pixmo.points.prompts import point_example
from pixmo.schema import validate

TASKS = ("long_caption", "transcript", "pointing", "point_count", "qa")
PROMPT_KINDS = ("template", "length_hint")
DEFAULT_MAX_PIXELS = 64_000_000

# Our own wording, in the spirit of the official prompt lists.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "Describe this image.",
    "Describe this image in detail.",
    "Write a detailed description of this picture.",
    "What do you see in this image? Describe it thoroughly.",
    "Give a long, detailed caption for this image.",
    "Caption this photo in detail.",
    "Tell me everything you can see in this image.",
    "Provide a thorough description of the scene.",
    "Describe what is shown here, including small details.",
    "Write a paragraph describing this image.",
)
TRANSCRIPT_TEMPLATES: tuple[str, ...] = (
    "Describe this image the way a person would say it aloud.",
    "Give a spoken description of this image.",
    "Talk me through this picture.",
    "Describe the image as if you were speaking to a friend.",
    "Say out loud what you see in this image.",
)
NO_POINTING_PREFIXES: tuple[str, ...] = (
    "Answer without points: ",
    "Do not point, just answer: ",
    "Reply in words only: ",
)
_HOW_MANY = re.compile(r"\bhow many\b", re.IGNORECASE)


@dataclass(frozen=True)
class TaskConfig:
    """Which tasks one dataset trains and how its prompts are written.

    ``caption_prompt``: "template" (fine-tuning: a templated question, style tag
    ``long_caption``/``transcript``) or "length_hint" (caption pre-training: the user turn is only
    ``"long_caption N:"``, to be used with ``ChatConfig.message_format="none"``).
    ``point_count_prob``: when both ``pointing`` and ``point_count`` are enabled, the share of point
    sets asked as point-then-count (the official mixture trains both variants).
    ``qa_style``: style of the sample's questions (``user_qa`` for PixMo-AskModelAnything);
    "how many" questions get a no-pointing prefix when ``qa_no_pointing_prefix`` is set, as the
    official AskModelAnything formatter does, so counting in words stays separate from pointing.
    ``shuffle_conversations``: shuffle their order (what truncation drops becomes random).
    """

    tasks: tuple[str, ...] = TASKS
    caption_prompt: str = "template"
    point_count_prob: float = 0.5
    qa_style: str = "user_qa"
    qa_no_pointing_prefix: bool = True
    shuffle_conversations: bool = True

    def __post_init__(self) -> None:
        check_fields(self, tasks=subset_of(TASKS), caption_prompt=one_of(PROMPT_KINDS),
                     point_count_prob=between(0, 1))


@dataclass(frozen=True)
class Example:
    """The conversations built from one sample, and the task of each."""

    key: str
    conversations: tuple[Conversation, ...]
    tasks: tuple[str, ...]


def _prompted(style: str, prompt: str, target: str, cfg: TaskConfig, chat: ChatConfig,
              rng: np.random.Generator) -> Conversation:
    if cfg.caption_prompt == "length_hint":
        return Conversation((length_hint_prompt(style, target, chat, rng), target))
    return Conversation((prompt, target), choose_style_tag(style, rng, chat))


def _pick(items: list[Any], rng: np.random.Generator) -> Any:
    return items[int(rng.integers(len(items)))]


def build_example(sample: ShardSample, cfg: TaskConfig, chat: ChatConfig,
                  rng: np.random.Generator) -> Example:
    """All conversations of the enabled tasks for one sample (schema ``sample``).

    The sample JSON is checked against its schema first, so a malformed one fails here with a
    ``PixmoError`` naming the key and field. A sample without any enabled annotation gives an
    example with no conversations, which the loader skips and counts.
    """
    validate("sample", sample.json, record_id=sample.key)
    obj = sample.json
    enabled = set(cfg.tasks)
    convs: list[Conversation] = []
    tasks: list[str] = []
    if "long_caption" in enabled and obj["captions"]:
        text = _pick(obj["captions"], rng)["text"]
        convs.append(_prompted("long_caption", _pick(list(CAPTION_TEMPLATES), rng), text, cfg,
                               chat, rng))
        tasks.append("long_caption")
    spoken = [t for t in obj["transcripts"] if t["text"].strip()]
    if "transcript" in enabled and spoken:
        text = _pick(spoken, rng)["text"].strip()
        convs.append(_prompted("transcript", _pick(list(TRANSCRIPT_TEMPLATES), rng), text, cfg,
                               chat, rng))
        tasks.append("transcript")
    point_tasks = [t for t in ("pointing", "point_count") if t in enabled]
    for point_set in obj["points"] if point_tasks else ():
        if len(point_tasks) == 2:
            task = "point_count" if rng.random() < cfg.point_count_prob else "pointing"
        else:
            task = point_tasks[0]
        py_rng = random.Random(int(rng.integers(2**63)))
        question, answer = point_example(point_set, count=task == "point_count", rng=py_rng)
        convs.append(Conversation((question, answer), choose_style_tag(task, rng, chat)))
        tasks.append(task)
    for qa in obj["qa"] if "qa" in enabled else ():
        question = qa["question"]
        if cfg.qa_no_pointing_prefix and _HOW_MANY.search(question):
            question = _pick(list(NO_POINTING_PREFIXES), rng) + question
        convs.append(Conversation((question, qa["answer"]),
                                  choose_style_tag(cfg.qa_style, rng, chat)))
        tasks.append("qa")
    if cfg.shuffle_conversations and len(convs) > 1:
        order = rng.permutation(len(convs))
        convs = [convs[i] for i in order]
        tasks = [tasks[i] for i in order]
    return Example(sample.key, tuple(convs), tuple(tasks))


def load_image(sample: ShardSample, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """The sample's image as an RGB PIL image, EXIF orientation applied.

    The stored bytes are the original file; its size is checked against ``max_pixels`` before
    any pixel is decoded (decompression-bomb limit).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    ext = next((e for e in IMAGE_EXTENSIONS if e in sample.files), None)
    if ext is None:
        raise PixmoError(f"no image member (expected one of {IMAGE_EXTENSIONS}), found "
                         f"{sorted(sample.files)}", record=sample.key, field="image")
    try:
        image = Image.open(io.BytesIO(sample.files[ext]))
        width, height = image.size
        if width * height > max_pixels:
            raise PixmoError(f"image is {width}x{height} = {width * height} pixels, more than "
                             f"max_pixels {max_pixels}", record=sample.key, field="image")
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError,
            SyntaxError) as exc:  # PIL reports some truncated/malformed files as SyntaxError
        raise PixmoError(f"cannot decode .{ext} image: {exc}", record=sample.key,
                         field="image") from exc
