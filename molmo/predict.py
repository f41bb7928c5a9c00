"""Asking a trained Molmo about one image: what ``molmo predict`` runs.

The checkpoint decides how images are cut: official checkpoints were trained
with the off-by-one patch-mask quirk, so it is switched on for them and off
for checkpoints of our own layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from molmo.generate import GenerationConfig, generate
from molmo.model.weights import from_pretrained, read_config
from molmo.preprocess.config import PreprocessConfig
from molmo.preprocess.processor import MolmoProcessor
from molmo.preprocess.tokenizer import MolmoTokenizer
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
        config = config or GenerationConfig(stop_token_ids=(self.tokenizer.eos_id,))
        arrays = self.processor(image, prompt)
        batch = {k: torch.as_tensor(arrays[k])[None] for k in
                 ("input_ids", "images", "image_masks", "image_input_idx")}
        out = generate(self.model, batch["input_ids"], batch["images"], batch["image_masks"],
                       batch["image_input_idx"], config, decode=self.tokenizer.decode)
        tokens = out.tokens[0]
        text = self.tokenizer.decode(tokens).strip()
        return Answer(text=text, points=parse_points(text), tokens=tokens)
