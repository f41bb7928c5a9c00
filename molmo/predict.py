"""Asking a trained Molmo about images: what ``molmo predict`` runs, one image or many.

Many: ``read_requests`` reads a folder or a JSONL file of (image, prompt) pairs lazily,
``predict_file`` answers them in batches (one padded ``generate`` call per batch) and writes
one JSON line per input in input order; a bad image or line is a line with an ``error``.

The checkpoint decides how images are cut: official checkpoints were trained
with the off-by-one patch-mask quirk, so it is switched on for them and off
for checkpoints of our own layout.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from molmo.generate import GenerationConfig, collate_prompts, generate
from molmo.model.weights import from_pretrained, read_config
from molmo.preprocess.config import PreprocessConfig
from molmo.preprocess.processor import MolmoProcessor
from molmo.preprocess.tokenizer import MolmoTokenizer
from pixmo.errors import PixmoError
from pixmo.points.text import parse_points


@dataclass(frozen=True)
class Answer:
    text: str
    points: list[tuple[float, float]]  # percent of width and height, parsed from the text
    tokens: list[int]


class Predictor:
    """A loaded model, tokenizer and processor, reused across questions."""

    def __init__(self, checkpoint: str | os.PathLike[str], *,
                 tokenizer: str | os.PathLike[str] | None = None, device: str = "cpu",
                 dtype: torch.dtype | None = None) -> None:
        cfg, layout = read_config(checkpoint)
        self.model = from_pretrained(checkpoint, device=device, dtype=dtype).eval()
        self.tokenizer = MolmoTokenizer.from_dir(Path(tokenizer or checkpoint),
                                                 vocab_size=cfg.llm.vocab_size)
        self.processor = MolmoProcessor(
            self.tokenizer, PreprocessConfig(official_mask_quirk=layout == "official"))

    def __call__(self, image: Any, prompt: str,
                 config: GenerationConfig | None = None) -> Answer:
        return self.answer_arrays([self.processor(image, prompt)], config)[0]

    def answer_arrays(self, examples: Sequence[dict[str, Any]],
                      config: GenerationConfig | None = None) -> list[Answer]:
        """Answers for processed examples, generated together (left-padded, so each answer
        is the one it gets alone)."""
        config = config or GenerationConfig(stop_token_ids=(self.tokenizer.eos_id,))
        batch = collate_prompts(examples)
        out = generate(self.model, batch["input_ids"], batch["images"], batch["image_masks"],
                       batch["image_input_idx"], config, decode=self.tokenizer.decode)
        answers = []
        for tokens in out.tokens:
            text = self.tokenizer.decode(tokens).strip()
            answers.append(Answer(text=text, points=parse_points(text), tokens=tokens))
        return answers


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_BAD_IMAGE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Request:
    """One (image, prompt) pair of ``--inputs``, or the line that could not be one."""

    image: str  # as the input names it (JSONL: relative to the JSONL's folder)
    path: Path | None  # where it is read from
    prompt: str | None
    id: Any = None
    error: str | None = None


def read_requests(inputs: str | os.PathLike[str], prompt: str | None) -> Iterator[Request]:
    """A folder's images (sorted by name, each asked ``prompt``) or a JSONL file's lines
    ``{"image", "prompt", "id"?}`` in order; a malformed line is a Request with an error."""
    inputs = Path(inputs)
    if inputs.is_dir():
        if prompt is None:
            raise PixmoError("a folder of images needs --prompt", field="--prompt")
        known = set(Image.registered_extensions())
        for path in sorted(inputs.iterdir()):
            if path.suffix.lower() in known and not path.name.startswith("."):
                yield Request(path.name, path, prompt)
        return
    try:
        fh = open(inputs, encoding="utf-8")
    except OSError as exc:
        raise PixmoError(f"cannot read the inputs: {exc.strerror or exc}",
                         file=str(inputs)) from exc
    with fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield _request(line, number, inputs.parent, prompt)


def _request(line: str, number: int, folder: Path, prompt: str | None) -> Request:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return Request(f"line {number}", None, None, error=f"line {number}: not JSON: {exc.msg}")
    if not isinstance(row, dict) or not isinstance(row.get("image"), str):
        return Request(f"line {number}", None, None,
                       error=f"line {number}: needs \"image\" (a path)")
    text = row.get("prompt", prompt)
    if not isinstance(text, str):
        return Request(row["image"], None, None, row.get("id"),
                       error=f"line {number}: needs \"prompt\" (text) or --prompt")
    return Request(row["image"], folder / row["image"], text, row.get("id"))


def _line(request: Request, **fields: Any) -> dict[str, Any]:
    head = {"id": request.id} if request.id is not None else {}
    return {**head, "image": request.image, "prompt": request.prompt, **fields}


def _open_image(path: Path) -> Image.Image:
    with Image.open(path) as opened:
        return ImageOps.exif_transpose(opened).convert("RGB")


def answer_batch(predictor: Predictor, requests: Sequence[Request],
                 config: GenerationConfig | None = None) -> list[dict[str, Any]]:
    """One JSON-ready line per request, in order: the answer with its points (percent and
    pixels of the image), or an ``error`` naming the bad input."""
    lines: list[dict[str, Any] | None] = [None] * len(requests)
    ready: list[tuple[int, dict[str, Any], tuple[int, int]]] = []
    for i, request in enumerate(requests):
        if request.error is not None or request.path is None or request.prompt is None:
            lines[i] = _line(request, error=request.error)
            continue
        try:
            image = _open_image(request.path)
            ready.append((i, predictor.processor(image, request.prompt), image.size))
        except _BAD_IMAGE as exc:
            lines[i] = _line(request, error=f"{request.image}: cannot read the image: "
                                           f"{getattr(exc, 'strerror', None) or exc}")
    if ready:
        answers = predictor.answer_arrays([arrays for _, arrays, _ in ready], config)
        for (i, _, (width, height)), answer in zip(ready, answers, strict=True):
            pixels = [[x * width / 100, y * height / 100] for x, y in answer.points]
            lines[i] = _line(requests[i], answer=answer.text,
                             points=[list(p) for p in answer.points], points_px=pixels,
                             width=width, height=height)
    return [line for line in lines if line is not None]


def predict_file(predictor: Predictor, requests: Iterable[Request], out: str | os.PathLike[str],
                 *, batch_size: int = 8, config: GenerationConfig | None = None
                 ) -> tuple[int, int]:
    """Answer every request, ``batch_size`` at a time, as JSON lines in input order.

    Lines go to ``OUT.partial`` (flushed after every batch, so progress can be watched there)
    and the file is renamed to ``out`` only when every request has its line: a killed run
    leaves no ``out``. Returns (answered, errors)."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    answered = errors = 0
    with open(partial, "w", encoding="utf-8") as fh:
        for batch in _batches(requests, batch_size):
            for line in answer_batch(predictor, batch, config):
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
                errors += "error" in line
                answered += "error" not in line
            fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, out)
    return answered, errors


def _batches(items: Iterable[Request], size: int) -> Iterator[tuple[Request, ...]]:
    it = iter(items)
    while batch := tuple(itertools.islice(it, size)):
        yield batch
