"""Export for serving: a Molmo in the official hub layout that Ai2's remote code and vLLM read.

``write_serving`` writes the weights under the official names (``weights.ours_to_official``,
the loading table read backwards), ``config.json`` (``official.to_official_config``; its
``auto_map`` names the official repository's remote code, and no code is copied),
``preprocessor_config.json`` and ``processor_config.json``, the run's tokenizer files and
``generation_config.json``. ``CONFIG_FIELDS`` and ``PREPROCESSOR_FIELDS`` list every field those
loaders read and which of them reads it; loading the directory back with ``from_pretrained`` gives
the same tensors bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from molmo.model.config import OFFICIAL_ADDITIONAL_VOCAB, VisionConfig
from molmo.model.molmo import Molmo
from molmo.model.official import MOLMO_7B_D_REPO, MOLMO_7B_O_REPO, MOLMOE_REPO
from molmo.model.weights import save_pretrained
from molmo.preprocess.config import PreprocessConfig
from molmo.preprocess.tokenizer import MolmoTokenizer
from pixmo.atomic import atomic_directory

log = logging.getLogger(__name__)

HF = "HF remote code"  # config_molmo.MolmoConfig / image_preprocessing_molmo of the hub repository
VLLM = "vLLM"  # vllm/model_executor/models/molmo.py (native MolmoForCausalLM)

# config.json. HF: the keys Ai2's config_molmo.MolmoConfig takes and writes back (the fixture
# tests/data/molmo_official_tiny/config.json was written by it; reference/molmo.md section 5);
# "auto_map", "architectures", "model_type" are read by transformers' Auto classes.
# vLLM: the attributes molmo.py reads from hf_config (MolmoAttention, LanguageModelMLP,
# MolmoDecoderLayer, MolmoModel, MolmoForCausalLM; vllm-project/vllm f06ae651), plus
# "architectures" (its model registry) and "torch_dtype"/"max_position_embeddings" (ModelConfig).
CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    "architectures": (HF, VLLM), "auto_map": (HF,), "model_type": (HF, VLLM),
    "hidden_size": (HF, VLLM), "intermediate_size": (HF, VLLM),
    "num_hidden_layers": (HF, VLLM), "num_attention_heads": (HF, VLLM),
    "num_key_value_heads": (HF, VLLM), "vocab_size": (HF, VLLM), "embedding_size": (HF, VLLM),
    "max_position_embeddings": (HF, VLLM), "rope_theta": (HF, VLLM),
    "layer_norm_eps": (HF, VLLM), "layer_norm_type": (HF, VLLM), "qkv_bias": (HF, VLLM),
    "attention_layer_norm": (HF, VLLM), "norm_after": (HF, VLLM), "weight_tying": (HF, VLLM),
    "clip_qkv": (HF,), "tie_word_embeddings": (HF,), "use_position_ids": (HF,),
    "torch_dtype": (HF, VLLM),
    # No value in our model: the official defaults. initializer_range only initialises new
    # weights (never read when loading), use_cache turns the KV cache on in generate.
    "initializer_range": (HF,), "use_cache": (HF,),
}

# preprocessor_config.json: the image processor's settings (values of allenai/Molmo-7B-D-0924's
# file, reference/molmo.md sections 1.1 and 5). vLLM runs the same remote-code processor and
# reads max_crops, base_image_input_size, image_patch_size, overlap_margins,
# image_token_length_w/h and image_padding_mask from it to size its inputs.
PREPROCESSOR_FIELDS: dict[str, tuple[str, ...]] = {
    "auto_map": (HF, VLLM), "image_processor_type": (HF,), "processor_class": (HF,),
    "base_image_input_size": (HF, VLLM), "image_patch_size": (HF, VLLM),
    "max_crops": (HF, VLLM), "overlap_margins": (HF, VLLM),
    "image_token_length_w": (HF, VLLM), "image_token_length_h": (HF, VLLM),
    "image_padding_mask": (HF, VLLM), "do_normalize": (HF,), "image_mean": (HF,),
    "image_std": (HF,),
}


# Tokens vLLM looks up by string in the tokenizer's vocabulary (MolmoProcessorWrapper): the image
# tokens it builds the image block from, and "<|endoftext|>", the BOS the block is inserted
# after. The official processor finds the image tokens by encoding them in one string.
VLLM_TOKENS = ("<im_patch>", "<im_col>", "<im_start>", "<im_end>", "<|endoftext|>")


def serving_repo(model: Molmo) -> str:
    """The official repository whose remote code reads this model's family."""
    llm = model.cfg.llm
    return MOLMOE_REPO if llm.moe_experts else MOLMO_7B_O_REPO if llm.qk_norm else MOLMO_7B_D_REPO


def preprocessor_config(pre: PreprocessConfig, repo: str) -> dict[str, Any]:
    """``preprocessor_config.json`` for the run's crop settings."""
    processors = {"AutoImageProcessor": f"{repo}--image_preprocessing_molmo.MolmoImageProcessor",
                  "AutoProcessor": f"{repo}--preprocessing_molmo.MolmoProcessor"}
    return {
        "auto_map": processors, "image_processor_type": "MolmoImageProcessor",
        "processor_class": "MolmoProcessor",
        "base_image_input_size": [pre.crop_size, pre.crop_size],
        "image_patch_size": pre.patch_size, "max_crops": pre.max_crops,
        "overlap_margins": list(pre.overlap_margins),
        "image_token_length_w": pre.tokens_per_side, "image_token_length_h": pre.tokens_per_side,
        "image_padding_mask": True, "do_normalize": True,
        "image_mean": list(pre.image_mean), "image_std": list(pre.image_std),
    }


def generation_config(tokenizer: MolmoTokenizer) -> dict[str, Any]:
    """The hub file holds only ``_from_model_config``; we add the ids so that ``generate`` and
    vLLM stop at EOS without ``stop_strings`` (the official processor's BOS is EOS)."""
    bos = tokenizer.eos_id if tokenizer.bos_id is None else tokenizer.bos_id
    return {"_from_model_config": True, "bos_token_id": bos,
            "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}


def _warn_unservable(model: Molmo, pre: PreprocessConfig) -> None:
    """Settings that config.json cannot carry: both official loaders hard-code them."""
    vision = model.cfg.vision
    if vision != VisionConfig() and not model.cfg.llm.moe_experts:
        log.warning("the ViT is not CLIP-L/336 with vit_layers [-2, -9]: its sizes go to "
                    "vision_backbone.json, which only this toolkit reads")
    if model.cfg.llm.additional_vocab_size != OFFICIAL_ADDITIONAL_VOCAB:
        log.warning("additional_vocab_size %d: the official code hard-codes %d",
                    model.cfg.llm.additional_vocab_size, OFFICIAL_ADDITIONAL_VOCAB)
    if not pre.official_mask_quirk:
        log.warning("trained with official_mask_quirk off: the official processor always makes "
                    "the quirk's image masks")


def save_tokenizer_files(tokenizer: MolmoTokenizer, directory: Path) -> None:
    """The tokenizer's files written into a model directory (beside its weights)."""
    tok = tokenizer.save(directory / ".tokenizer")
    for item in tok.iterdir():
        os.replace(item, directory / item.name)
    tok.rmdir()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_serving(model: Molmo, tokenizer: MolmoTokenizer, preprocess: PreprocessConfig,
                  dst: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model`` with its tokenizer and crop settings in the official hub layout."""
    dst, repo = Path(dst), serving_repo(model)
    _warn_unservable(model, preprocess)
    with atomic_directory(dst, overwrite=overwrite) as staged:
        save_pretrained(model, staged, layout="official", overwrite=True)
        config = json.loads((staged / "config.json").read_text())
        dtype = next(iter(model.state_dict().values())).dtype
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
        _write_json(staged / "config.json", config)
        _write_json(staged / "preprocessor_config.json", preprocessor_config(preprocess, repo))
        _write_json(staged / "processor_config.json", {
            "auto_map": {"AutoProcessor": f"{repo}--preprocessing_molmo.MolmoProcessor"},
            "processor_class": "MolmoProcessor"})
        _write_json(staged / "generation_config.json", generation_config(tokenizer))
        save_tokenizer_files(tokenizer, staged)
        tok_config = json.loads((staged / "tokenizer_config.json").read_text())
        tok_config.update(tokenizer_class="PreTrainedTokenizerFast",
                          model_max_length=model.cfg.llm.max_seq_len)
        _write_json(staged / "tokenizer_config.json", tok_config)
    log.info("exported the model in the official layout to %s (remote code: %s)", dst, repo)
    return dst
