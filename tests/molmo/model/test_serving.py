"""Export for serving: the official fixture model written back in the hub layout has the hub's
tensor names, every config.json / preprocessor_config.json field the official remote code and
vLLM read, tokenizer files transformers loads, and reads back bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from molmo.model.config import preset
from molmo.model.molmo import Molmo
from molmo.model.official import (
    MOLMO_7B_D_REPO,
    MOLMO_7B_O_REPO,
    MOLMOE_REPO,
    from_official_config,
)
from molmo.model.serving import (
    CONFIG_FIELDS,
    HF,
    PREPROCESSOR_FIELDS,
    VLLM,
    VLLM_TOKENS,
    write_serving,
)
from molmo.model.weights import from_pretrained
from molmo.preprocess.config import PreprocessConfig
from molmo.preprocess.tokenizer import IMAGE_TOKENS, MolmoTokenizer, train_bpe_tokenizer
from tests.paths import OFFICIAL_TINY

# allenai/Molmo-7B-D-0924's preprocessor_config.json (reference/molmo.md sections 1.1 and 5),
# which the default crop settings must reproduce.
HUB_PREPROCESSOR = {
    "image_processor_type": "MolmoImageProcessor", "processor_class": "MolmoProcessor",
    "base_image_input_size": [336, 336], "image_patch_size": 14, "max_crops": 12,
    "overlap_margins": [4, 4], "image_token_length_w": 12, "image_token_length_h": 12,
    "image_padding_mask": True, "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}


def _stored(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Molmo, MolmoTokenizer, Path]:
    root = tmp_path_factory.mktemp("serving")
    model = from_pretrained(OFFICIAL_TINY)
    texts = ["Point to the square.", "How many circles are there?", "A red square"] * 5
    tokenizer = train_bpe_tokenizer(texts, root / "tok", vocab_size=model.cfg.llm.vocab_size)
    return model, tokenizer, write_serving(model, tokenizer, PreprocessConfig(), root / "dst")


def test_tensors_carry_the_hub_names_and_read_back_bit_exact(exported) -> None:
    model, _, dst = exported
    ours = _stored(dst / "model.safetensors")
    hub = _stored(OFFICIAL_TINY / "model.safetensors")  # written by the official code
    assert ours.keys() == hub.keys()
    for name, tensor in hub.items():
        assert torch.equal(ours[name], tensor), name
    back = from_pretrained(dst)
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    batch = {k: torch.from_numpy(np.load(OFFICIAL_TINY / "ex_100x300" / f"{k}.npy"))[None]
             for k in ("input_ids", "images", "image_masks", "image_input_idx")}
    with torch.no_grad():
        assert torch.equal(back(**batch), model(**batch))
    assert not list(dst.glob("*.py"))  # the remote code is named, never copied


def test_config_has_every_field_the_loaders_read(exported) -> None:
    _, _, dst = exported
    config = json.loads((dst / "config.json").read_text())
    hub = json.loads((OFFICIAL_TINY / "config.json").read_text())
    # The official config class writes exactly its own fields: the list names all of them.
    assert set(hub) - {"transformers_version"} <= set(CONFIG_FIELDS)
    assert all(set(readers) <= {HF, VLLM} for readers in CONFIG_FIELDS.values())
    for field in CONFIG_FIELDS:
        assert field in config, field
        if field != "auto_map":
            assert config[field] == hub[field], field
    # auto_map: the hub's module.Class names, prefixed with the repository that holds them.
    assert config["auto_map"] == {k: f"{MOLMO_7B_D_REPO}--{v}"
                                  for k, v in hub["auto_map"].items()}
    assert from_official_config(dst / "config.json") == from_official_config(
        OFFICIAL_TINY / "config.json")


def test_preprocessor_generation_and_processor_files(exported) -> None:
    _, tokenizer, dst = exported
    pre = json.loads((dst / "preprocessor_config.json").read_text())
    assert set(pre) == set(PREPROCESSOR_FIELDS)
    assert {k: v for k, v in pre.items() if k != "auto_map"} == HUB_PREPROCESSOR
    assert pre["auto_map"] == {
        "AutoImageProcessor": f"{MOLMO_7B_D_REPO}--image_preprocessing_molmo.MolmoImageProcessor",
        "AutoProcessor": f"{MOLMO_7B_D_REPO}--preprocessing_molmo.MolmoProcessor"}
    processor = json.loads((dst / "processor_config.json").read_text())
    assert processor["auto_map"]["AutoProcessor"] == pre["auto_map"]["AutoProcessor"]
    generation = json.loads((dst / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_id == generation["bos_token_id"]


def test_tokenizer_files_load_in_transformers_and_ours(exported) -> None:
    transformers = pytest.importorskip("transformers")
    _, tokenizer, dst = exported
    hf = transformers.AutoTokenizer.from_pretrained(str(dst))
    image_ids = list(tokenizer.image_ids.as_tuple())
    # The official processor finds the image tokens by encoding them in one string.
    assert hf.encode("".join(IMAGE_TOKENS), add_special_tokens=False) == image_ids
    assert hf.eos_token_id == tokenizer.eos_id
    vocab = hf.get_vocab()
    ids = dict(zip(IMAGE_TOKENS, image_ids, strict=True))
    assert [vocab[t] for t in VLLM_TOKENS] == [*(ids[t] for t in VLLM_TOKENS[:4]), hf.eos_token_id]
    text = "Point to the square"
    assert hf.encode(text, add_special_tokens=False) == tokenizer.encode(text)
    again = MolmoTokenizer.from_dir(dst)
    assert list(again.image_ids.as_tuple()) == image_ids and again.eos_id == tokenizer.eos_id


@pytest.mark.parametrize(("name", "repo", "stem"), [
    ("tiny", MOLMO_7B_D_REPO, "molmo"), ("tiny-olmo", MOLMO_7B_O_REPO, "molmo"),
    ("tiny-moe", MOLMOE_REPO, "molmoe")])
def test_each_family_names_its_remote_code_and_reads_back(exported, tmp_path, name, repo,
                                                          stem) -> None:
    _, tokenizer, _ = exported
    torch.manual_seed(0)
    model = Molmo(preset(name))
    dst = write_serving(model, tokenizer, PreprocessConfig(), tmp_path / name)
    config = json.loads((dst / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": f"{repo}--config_{stem}.MolmoConfig",
        "AutoModelForCausalLM": f"{repo}--modeling_{stem}.MolmoForCausalLM"}
    assert config["torch_dtype"] == "float32"
    back = from_pretrained(dst)
    for key, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key
    ids = torch.arange(1, 30)[None]
    with torch.no_grad():
        assert torch.equal(back(ids), model(ids))
