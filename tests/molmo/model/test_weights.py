"""Checkpoint layouts: strict official loading, our own format, conversion round trips, and the
official tensor names/shapes of the four released models (from reference/molmo.md 4.2 and 5)."""

from __future__ import annotations

import shutil
import weakref
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from molmo.model.config import preset
from molmo.model.molmo import Molmo
from molmo.model.official import from_official_config
from molmo.model.weights import (
    INDEX_FILE,
    convert,
    family_map,
    from_pretrained,
    ours_to_official,
    save_pretrained,
)
from pixmo.errors import PixmoError
from tests.paths import OFFICIAL_TINY

FIXTURE = OFFICIAL_TINY


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def _assert_bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), name


def _official_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "official"
    dst.mkdir()
    for name in ("config.json", "vision_backbone.json", "model.safetensors"):
        shutil.copy(FIXTURE / name, dst / name)
    return dst


# ---- expected official layout, written from reference/molmo.md sections 4, 4.2 and 5 --------

def expected_official(d: int, layers: int, heads: int, kv: int, half: int, embedding: int,
                      qkv_bias: bool, qk_norm: bool, experts: int = 0) -> dict[str, tuple]:
    """Official tensor names and shapes of a released model (CLIP-L/336 ViT, 23 blocks)."""
    vit, w = "model.vision_backbone.image_vit.", 1024
    names: dict[str, tuple] = {
        vit + "class_embedding": (w,), vit + "positional_embedding": (577, w),
        vit + "patch_embedding.weight": (w, 588), vit + "pre_ln.weight": (w,),
        vit + "pre_ln.bias": (w,),
        "model.vision_backbone.pad_embed": (2, 2 * w),
        "model.vision_backbone.image_projector.w1.weight": (half, w),
        "model.vision_backbone.image_projector.w3.weight": (half, w),
        "model.vision_backbone.image_projector.w2.weight": (d, half),
        "model.transformer.wte.embedding": (embedding, d),
        "model.transformer.wte.new_embedding": (128, d),
        "model.transformer.ln_f.weight": (d,),
    }
    for p in ("wq", "wk", "wv", "wo"):
        pool = f"model.vision_backbone.image_pooling_2d.{p}."
        names[pool + "weight"] = (w, w if p == "wo" else 2 * w)
        names[pool + "bias"] = (w,)
    for i in range(23):
        blk = f"{vit}transformer.resblocks.{i}."
        for p in ("wq", "wk", "wv", "wo"):
            names[f"{blk}attention.{p}.weight"], names[f"{blk}attention.{p}.bias"] = (w, w), (w,)
        for norm in ("attention_norm", "ffn_norm"):
            names[f"{blk}{norm}.weight"], names[f"{blk}{norm}.bias"] = (w,), (w,)
        names[blk + "feed_forward.w1.weight"], names[blk + "feed_forward.w1.bias"] = (4096, w), (
            4096,)
        names[blk + "feed_forward.w2.weight"], names[blk + "feed_forward.w2.bias"] = (w, 4096), (
            w,)
    hd = d // heads
    qkv = (d + 2 * kv * hd, d)
    for i in range(layers):
        blk = f"model.transformer.blocks.{i}."
        if experts:  # MolmoE: .attn. / .mlp. sub-modules, one tensor per expert
            a, m = blk + "attn.", blk + "mlp."
            names.update({a + "att_proj.weight": qkv, a + "attn_out.weight": (d, d),
                          a + "attn_norm.weight": (d,), m + "ff_norm.weight": (d,),
                          m + "gate.weight": (experts, d)})
            for e in range(experts):
                names[f"{m}experts.{e}.gate_proj.weight"] = (half, d)
                names[f"{m}experts.{e}.up_proj.weight"] = (half, d)
                names[f"{m}experts.{e}.down_proj.weight"] = (d, half)
        else:
            a = blk
            names.update({blk + "att_proj.weight": qkv, blk + "attn_out.weight": (d, d),
                          blk + "attn_norm.weight": (d,), blk + "ff_norm.weight": (d,),
                          blk + "ff_proj.weight": (2 * half, d),
                          blk + "ff_out.weight": (d, half)})
        if qkv_bias:
            names[a + "att_proj.bias"] = (qkv[0],)
        if qk_norm:
            names[a + "q_norm.weight"], names[a + "k_norm.weight"] = (d,), (kv * hd,)
    names["lm_head.weight" if experts else "model.transformer.ff_out.weight"] = (embedding, d)
    return names


RELEASED = {
    "molmo-7b-d": expected_official(3584, 28, 28, 4, 18944, 152064, True, False),
    "molmo-7b-o": expected_official(4096, 32, 32, 32, 11008, 100352, False, True),
    "molmoe-1b": expected_official(2048, 16, 16, 16, 1024, 50304, False, True, experts=64),
    "molmo-72b": expected_official(8192, 80, 64, 8, 29568, 152064, True, False),
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_presets_map_one_to_one_onto_official_names(name: str) -> None:
    with torch.device("meta"):
        model = Molmo(preset(name))
    table = family_map(model.cfg)
    ours = {ours_to_official(n, table): tuple(p.shape) for n, p in model.named_parameters()}
    assert len(ours) == len(list(model.parameters()))  # one-to-one
    assert ours == RELEASED[name]


def test_reference_numbers() -> None:
    d = RELEASED["molmo-7b-d"]
    assert d["model.transformer.blocks.0.att_proj.weight"] == (4608, 3584)
    assert d["model.transformer.blocks.0.ff_proj.weight"] == (37888, 3584)
    with torch.device("meta"):
        assert sum(p.numel() for p in Molmo(preset("molmo-7b-d")).parameters()) == 8_021_025_280
        moe = Molmo(preset("molmoe-1b"))
    assert len(RELEASED["molmoe-1b"]) == 3573
    assert sum(p.numel() for p in moe.parameters()) == 7_221_875_712


# ---- loading, saving, converting the tiny official checkpoint -------------------------------

def test_official_fixture_loads_strictly_with_every_tensor() -> None:
    model = from_pretrained(FIXTURE)
    stored = load_file(str(FIXTURE / "model.safetensors"))
    table = family_map(model.cfg)
    for name, param in model.named_parameters():
        assert torch.equal(param, stored[ours_to_official(name, table)]), name
    assert len(stored) == len(list(model.parameters()))


def test_unmapped_missing_and_misshaped_tensors_fail_by_name(tmp_path: Path) -> None:
    src = _official_copy(tmp_path)
    tensors = load_file(str(src / "model.safetensors"))

    def broken(change: dict) -> Path:
        save_file({**tensors, **change}, str(src / "model.safetensors"))
        return src

    with pytest.raises(PixmoError, match="'model.transformer.extra.weight' has no mapping"):
        from_pretrained(broken({"model.transformer.extra.weight": torch.zeros(2)}))
    name = "model.transformer.blocks.1.ff_out.weight"
    with pytest.raises(PixmoError, match=rf"'{name}' has shape \[64, 95\]"):
        from_pretrained(broken({name: torch.zeros(64, 95)}))
    del tensors[name]
    with pytest.raises(PixmoError, match=rf"1 tensors missing.*'{name}'"):
        from_pretrained(broken({}))


def test_pickle_weights_are_refused(tmp_path: Path) -> None:
    src = _official_copy(tmp_path)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    with pytest.raises(PixmoError, match="pickle .bin weights are not read"):
        from_pretrained(src)


def test_official_to_ours_to_official_is_bit_exact(tmp_path: Path) -> None:
    ours = convert(FIXTURE, tmp_path / "ours", to="ours")
    back = convert(ours, tmp_path / "back", to="official", max_shard_bytes=300_000)
    assert (back / INDEX_FILE).is_file()  # written as shards, like the hub checkpoints
    _assert_bit_equal(_tensors(back), _tensors(FIXTURE))
    assert from_official_config(back / "config.json") == from_official_config(
        FIXTURE / "config.json")
    with safe_open(str(next(ours.glob("*.safetensors"))), "pt") as f:
        assert "llm.lm_head.weight" in f.keys()
    # The converted directories load to identical models.
    a, b = from_pretrained(ours), from_pretrained(back)
    _assert_bit_equal(a.state_dict(), b.state_dict())


@pytest.mark.parametrize("name", ["tiny", "tiny-moe", "tiny-olmo"])
def test_save_load_round_trip_is_bit_exact(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    model = Molmo(preset(name)).to(torch.bfloat16)
    path = save_pretrained(model, tmp_path / "ckpt", max_shard_bytes=200_000)
    assert (path / INDEX_FILE).is_file() and not list(tmp_path.glob(".ckpt*"))
    loaded = from_pretrained(path)
    assert loaded.cfg == model.cfg
    _assert_bit_equal(loaded.state_dict(), model.state_dict())
    # Official layout written from our model and read back, including the MoE family names.
    official = save_pretrained(model, tmp_path / "official", layout="official")
    _assert_bit_equal(from_pretrained(official).state_dict(), model.state_dict())
    with pytest.raises(PixmoError, match="not empty"):
        save_pretrained(model, path)
    save_pretrained(model, path, overwrite=True)
    _assert_bit_equal(from_pretrained(path).state_dict(), model.state_dict())


def test_loading_holds_one_stored_tensor_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model is allocated once and filled tensor by tensor: never a second full copy."""
    import molmo.model.weights as checkpoint

    original = checkpoint.stored_tensors
    alive: list[weakref.ref] = []
    most = 0

    def tracking(files: list[Path]):
        for name, load, shape in original(files):
            def tracked(load=load) -> torch.Tensor:
                nonlocal most
                tensor = load()
                alive.append(weakref.ref(tensor))
                most = max(most, sum(r() is not None for r in alive))
                return tensor
            yield name, tracked, shape

    monkeypatch.setattr(checkpoint, "stored_tensors", tracking)
    from_pretrained(FIXTURE)
    assert len(alive) == 195 and most == 1
