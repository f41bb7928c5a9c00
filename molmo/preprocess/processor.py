"""The Molmo processor: (image, conversations) to one example's token ids, labels and crops.

The image block (``molmo/preprocess/crops.py``) goes right after BOS, as in the official HF
processor of Molmo-7B-D-0924; the conversations follow, each in the chat format of
``molmo/preprocess/chat.py``, with next-token labels and loss weights. Crops come as "float32",
CLIP-normalised and model-ready (the official form), or "uint8", a quarter of the bytes for
DataLoader workers to ship, finished by ``molmo.preprocess.batching.normalize_images``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from molmo.preprocess.chat import (
    Conversation,
    TokenizedConversation,
    as_conversations,
    tokenize_conversation,
)
from molmo.preprocess.config import PreprocessConfig, numpy_dtype
from molmo.preprocess.crops import ImageInput, preprocess_image
from molmo.preprocess.tokenizer import TextTokenizer
from pixmo.errors import PixmoError

logger = logging.getLogger(__name__)

PREFIX_SUBSEGMENT = 10000  # BOS + image tokens: visible to every conversation


class MolmoProcessor:
    """Turns (image, text) into the model's arrays, per example; picklable, no global state.

    The image block goes right after BOS (as in the official HF processor); each conversation
    follows with its own ``subsegment_ids`` value k and positions restarting after the shared
    prefix (BOS + image tokens, subsegment ``PREFIX_SUBSEGMENT``), so one image can carry
    several independent conversations in one sequence. The model lets query i see key j when
    j <= i and ``subsegment_ids[i] <= subsegment_ids[j]`` (so conversations never see each
    other); with one conversation this is plain causal attention.

    ``pixel_dtype`` "uint8" emits unnormalised uint8 crops, for the training loader to ship
    cheaply; the model needs them through ``molmo.preprocess.batching`` (``collate``, then
    ``normalize_images``).
    """

    def __init__(
        self,
        tokenizer: TextTokenizer,
        config: PreprocessConfig | None = None,
        *,
        pixel_dtype: str = "float32",
    ) -> None:
        numpy_dtype(pixel_dtype)
        self.tokenizer = tokenizer
        self.config = config or PreprocessConfig()
        self.pixel_dtype = pixel_dtype

    @property
    def bos_id(self) -> int:
        """BOS, or EOS for tokenizers without one (Qwen2, OLMo), as the official code does."""
        bos = self.tokenizer.bos_id
        return self.tokenizer.eos_id if bos is None else bos

    def __call__(
        self,
        image: Any | None,
        text: str | Sequence[str] | Sequence[Conversation],
        *,
        style: str | None = None,
        weight: float = 1.0,
    ) -> dict[str, np.ndarray]:
        """Arrays for one example.

        ``text``: a prompt (inference), a list of messages alternating user/assistant, or a list
        of :class:`Conversation`. ``weight`` multiplies the example's loss weights.

        Returns numpy arrays: ``input_ids`` [L] int64; ``labels`` [L] int64, the next token
        where it is a target, else -100; ``loss_masks`` [L] float32, the weight of ``labels``;
        ``position_ids`` [L] int64; ``subsegment_ids`` [L] int32; ``images`` [N, 576, 588]
        float32 (or uint8, see ``pixel_dtype``); ``image_masks`` [N, 576] float32;
        ``image_input_idx`` [N, 144] int32 (absolute positions in ``input_ids``, -100 = dropped
        token). N = 0 without an image.
        """
        cfg = self.config
        if not weight >= 0.0:
            raise PixmoError(f"example weight must be >= 0, got {weight}", field="weight")
        conversations = as_conversations(text, style)
        if image is None:
            img = ImageInput.empty(cfg, self.pixel_dtype)
        else:
            img = preprocess_image(image, cfg, self.tokenizer.image_ids, self.pixel_dtype)
        prefix = np.concatenate([[self.bos_id], img.tokens]).astype(np.int64)
        out = self._sequence(
            prefix, [tokenize_conversation(c, self.tokenizer, cfg.chat) for c in conversations]
        )
        scale = weight
        if cfg.conversation_weighting == "root_subsegments":
            scale *= float(np.sqrt(1.0 / len(conversations)))
        out["loss_masks"] = np.where(out["labels"] >= 0, scale, 0.0).astype(np.float32)
        out["images"] = img.images
        out["image_masks"] = img.image_masks
        # The image block starts at position 1, right after BOS.
        out["image_input_idx"] = np.where(
            img.image_input_idx >= 0, img.image_input_idx + 1, -100
        ).astype(np.int32)
        return out

    def _sequence(
        self, prefix: np.ndarray, conversations: list[TokenizedConversation]
    ) -> dict[str, np.ndarray]:
        """Prefix then conversations: ids, next-token labels, positions and subsegments."""
        n_prefix = len(prefix)
        ids, targets = [prefix], [np.zeros(n_prefix, bool)]
        positions = [np.arange(n_prefix)]
        subsegments = [np.full(n_prefix, PREFIX_SUBSEGMENT)]
        for k, conv in enumerate(conversations):
            ids.append(conv.ids)
            targets.append(conv.is_target)
            positions.append(n_prefix + np.arange(len(conv.ids)))
            subsegments.append(np.full(len(conv.ids), k))
        input_ids = np.concatenate(ids)
        length = len(input_ids)
        limit = self.config.max_sequence_length
        if limit is not None and length > limit:
            if n_prefix > limit:
                raise PixmoError(
                    f"BOS + image block need {n_prefix} tokens, more than max_sequence_length "
                    f"{limit}",
                    field="max_sequence_length",
                )
            logger.debug("truncating example from %d to %d tokens", length, limit)
            length = limit
        input_ids = input_ids[:length]
        is_target = np.concatenate(targets)[:length]
        labels = np.full(length, -100, np.int64)
        labels[:-1] = np.where(is_target[1:], input_ids[1:], -100)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": np.concatenate(positions)[:length].astype(np.int64),
            "subsegment_ids": np.concatenate(subsegments)[:length].astype(np.int32),
        }
