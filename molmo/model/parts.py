"""A Molmo from a Hugging Face LLM and a CLIP vision tower: where the official recipe starts.

``from_parts(llm=DIR, vision=DIR)`` reads two directories saved by transformers: a causal LM
(``Qwen2ForCausalLM``, ``Olmo2ForCausalLM`` or ``OlmoeForCausalLM``) and a ``CLIPModel`` or
``CLIPVisionModel``, each a config.json plus safetensors (one file or shards). The sizes come
from those configs; anything our architecture cannot represent is refused by file and key.

Names map through one table per part, Hugging Face template -> (our template, slot). A slot puts
a tensor into rows of a fused one (q|k|v of ``attn.qkv``, up|gate of ``mlp.up_gate``, as the
official ``scripts/convert_hf_to_molmo.py`` concatenates them); None drops a tensor on purpose.
The ViT keeps CLIP's blocks but the last and reads features from blocks -2 and -9, as the
official recipe does (23 of ViT-L/14-336's 24 blocks; reference/molmo.md section 2).

The connector and Molmo's extra token rows are new, initialised as the official
``reset_with_pretrained_weights`` does: N(0, 0.02) weights, zero biases, zero pad embeddings,
N(0, 0.02) new embedding rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from molmo.model.config import MolmoConfig
from molmo.model.molmo import Molmo
from molmo.model.weights import split_name, stored_tensors, weight_files
from pixmo.errors import PixmoError

log = logging.getLogger(__name__)

INIT_STD = 0.02  # the official initializer_range and new_embedding_init_range
PARTS = ("vision", "connector", "llm")
#: Fields read from the parts' configs: the pretrained weights fix them.
FROM_CONFIGS = {
    "vision": ("width", "heads", "head_dim", "mlp_hidden", "patch_size", "image_size",
               "norm_eps"),
    "llm": ("d_model", "layers", "heads", "kv_heads", "mlp_hidden", "embedding_size",
            "rope_theta", "norm_eps", "qkv_bias", "qk_norm", "norm_after", "moe_experts",
            "moe_top_k"),
}

Target = tuple[str, str] | None  # (our template, slot) or None: dropped on purpose

# ---- name tables ---------------------------------------------------------------------------

_HF = "model.layers.{}."
_OURS = "llm.blocks.{}."


def _whole(pairs: dict[str, str]) -> dict[str, Target]:
    return {hf: (ours, "") for hf, ours in pairs.items()}


def _llm_table(qkv_bias: bool, qk_norm: bool, attn_norm: str, mlp_norm: str,
               mlp: dict[str, Target]) -> dict[str, Target]:
    """One causal-LM family: attention, the two block norms (by their HF names), the MLP."""
    table: dict[str, Target] = {
        _HF + f"self_attn.{p}_proj.{kind}": (_OURS + f"attn.qkv.{kind}", p)
        for p in "qkv" for kind in (("weight", "bias") if qkv_bias else ("weight",))}
    if qk_norm:
        table.update(_whole({_HF + f"self_attn.{p}_norm.weight": _OURS + f"attn.{p}_norm.weight"
                             for p in "qk"}))
    table.update(_whole({
        _HF + "self_attn.o_proj.weight": _OURS + "attn.out.weight",
        _HF + f"{attn_norm}.weight": _OURS + "attn_norm.weight",
        _HF + f"{mlp_norm}.weight": _OURS + "mlp_norm.weight",
        "model.embed_tokens.weight": "llm.embed.base",
        "model.norm.weight": "llm.norm.weight",
        "lm_head.weight": "llm.lm_head.weight",
    }))
    table[_HF + "self_attn.rotary_emb.inv_freq"] = None  # a buffer older versions saved
    return {**table, **mlp}


_DENSE_MLP: dict[str, Target] = {
    _HF + "mlp.up_proj.weight": (_OURS + "mlp.up_gate.weight", "up"),
    _HF + "mlp.gate_proj.weight": (_OURS + "mlp.up_gate.weight", "gate"),
    _HF + "mlp.down_proj.weight": (_OURS + "mlp.down.weight", ""),
}
_MOE_MLP: dict[str, Target] = _whole({
    _HF + "mlp.gate.weight": _OURS + "mlp.router.weight",
    **{_HF + f"mlp.experts.{{}}.{p}_proj.weight": _OURS + f"mlp.experts.{{}}.{p}.weight"
       for p in ("gate", "up", "down")},
})

_CLIP_BLOCK, _VIT_BLOCK = "encoder.layers.{}.", "vision.blocks.{}."
CLIP_TABLE: dict[str, Target] = {
    **_whole({
        "embeddings.class_embedding": "vision.class_embed",
        "embeddings.patch_embedding.weight": "vision.patch_embed.weight",  # conv -> linear
        "embeddings.position_embedding.weight": "vision.pos_embed",
        **{f"pre_layrnorm.{k}": f"vision.pre_ln.{k}" for k in ("weight", "bias")},
        **{_CLIP_BLOCK + f"{hf}.{k}": _VIT_BLOCK + f"{ours}.{k}" for k in ("weight", "bias")
           for hf, ours in (("self_attn.q_proj", "attn.wq"), ("self_attn.k_proj", "attn.wk"),
                            ("self_attn.v_proj", "attn.wv"), ("self_attn.out_proj", "attn.wo"),
                            ("layer_norm1", "attn_norm"), ("layer_norm2", "mlp_norm"),
                            ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"))},
    }),
    "embeddings.position_ids": None,  # a buffer older versions saved
    "post_layernorm.weight": None,  # Molmo's ViT has no final LayerNorm
    "post_layernorm.bias": None,
}
#: CLIPModel's text tower and projection heads: not part of the vision tower.
CLIP_FOREIGN = ("text_model.", "visual_projection.", "text_projection.", "logit_scale")


def _conv_to_linear(weight: torch.Tensor) -> torch.Tensor:
    """CLIP's patch conv [width, 3, p, p] -> Linear over (row, col, channel) patches."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


RESHAPE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "vision.patch_embed.weight": _conv_to_linear}


@dataclass(frozen=True)
class Family:
    """How one transformers causal-LM class maps onto our decoder."""

    fixed: dict[str, Any]  # LLMConfig fields the architecture fixes
    table: dict[str, Target]
    accepted: dict[str, tuple[Any, ...]]  # config key -> values we represent (first: default)
    moe: bool = False


_ALWAYS = {"hidden_act": ("silu",), "rope_scaling": (None,)}
FAMILIES = {
    "Qwen2ForCausalLM": Family(
        {"qkv_bias": True, "qk_norm": False, "norm_after": False},
        _llm_table(True, False, "input_layernorm", "post_attention_layernorm", _DENSE_MLP),
        {**_ALWAYS, "use_sliding_window": (False,)}),
    "Olmo2ForCausalLM": Family(  # post-norm: the norms sit after attention and MLP
        {"qkv_bias": False, "qk_norm": True, "norm_after": True},
        _llm_table(False, True, "post_attention_layernorm", "post_feedforward_layernorm",
                   _DENSE_MLP),
        {**_ALWAYS, "attention_bias": (False,)}),
    "OlmoeForCausalLM": Family(
        {"qkv_bias": False, "qk_norm": True, "norm_after": False},
        _llm_table(False, True, "input_layernorm", "post_attention_layernorm", _MOE_MLP),
        {**_ALWAYS, "attention_bias": (False,), "clip_qkv": (None,), "norm_topk_prob": (False,)},
        moe=True),
}

# ---- configs -------------------------------------------------------------------------------

#: CLIPVisionConfig defaults, for keys a config.json leaves out.
CLIP_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "num_channels": 3, "image_size": 224,
                 "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}


def _read_json(directory: Path) -> tuple[dict[str, Any], str]:
    path = directory / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")), str(path)
    except FileNotFoundError:
        raise PixmoError("no config.json in the directory", file=str(directory)) from None
    except json.JSONDecodeError as exc:
        raise PixmoError(f"invalid JSON: {exc}", file=str(path)) from None


def _refuse(cfg: dict[str, Any], accepted: dict[str, tuple[Any, ...]], src: str) -> None:
    for key, values in accepted.items():
        if cfg.get(key, values[0]) not in values:
            raise PixmoError(f"{cfg[key]!r} is not supported (Molmo needs {values[0]!r})",
                             file=src, field=key)


def _rope_theta(cfg: dict[str, Any], src: str) -> float:
    """Plain RoPE's base: ``rope_parameters`` (transformers 5) or ``rope_theta`` (4)."""
    rope = cfg.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise PixmoError(f"rope_type {rope['rope_type']!r} is not supported (Molmo uses plain "
                         "RoPE)", file=src, field="rope_parameters")
    theta = rope.get("rope_theta", cfg.get("rope_theta"))
    if theta is None:
        raise PixmoError("missing key", file=src, field="rope_theta")
    return float(theta)


def _llm_fields(cfg: dict[str, Any], src: str) -> tuple[dict[str, Any], Family]:
    """LLMConfig fields of a transformers causal-LM config, and its family."""
    arch = (cfg.get("architectures") or [None])[0]
    if arch not in FAMILIES:
        raise PixmoError(f"{arch!r} is not supported; supported: {', '.join(FAMILIES)}",
                         file=src, field="architectures")
    family = FAMILIES[arch]
    _refuse(cfg, family.accepted, src)
    if any(kind != "full_attention" for kind in cfg.get("layer_types") or ()):
        raise PixmoError("only full attention is supported", file=src, field="layer_types")
    try:
        fields = {"d_model": cfg["hidden_size"], "layers": cfg["num_hidden_layers"],
                  "heads": cfg["num_attention_heads"],
                  "kv_heads": cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                  "mlp_hidden": cfg["intermediate_size"], "vocab_size": cfg["vocab_size"],
                  "embedding_size": cfg["vocab_size"], "rope_theta": _rope_theta(cfg, src),
                  "norm_eps": float(cfg["rms_norm_eps"]),
                  "max_seq_len": cfg["max_position_embeddings"], **family.fixed}
        if family.moe:
            fields.update(moe_experts=cfg["num_experts"], moe_top_k=cfg["num_experts_per_tok"])
    except KeyError as err:
        raise PixmoError("missing key", file=src, field=str(err.args[0])) from None
    if cfg.get("head_dim") not in (None, fields["d_model"] // fields["heads"]):
        raise PixmoError(f"head_dim {cfg['head_dim']} is not hidden_size / num_attention_heads",
                         file=src, field="head_dim")
    return fields, family


def _vision_fields(cfg: dict[str, Any], src: str) -> tuple[dict[str, Any], int]:
    """VisionConfig fields of a CLIPModel or CLIPVisionModel config, and CLIP's block count."""
    kind = cfg.get("model_type")
    if kind not in ("clip", "clip_vision_model"):
        raise PixmoError(f"{kind!r} is not a CLIP model (CLIPModel or CLIPVisionModel)",
                         file=src, field="model_type")
    vit = {**CLIP_DEFAULTS, **((cfg.get("vision_config") or {}) if kind == "clip" else cfg)}
    _refuse(vit, {"hidden_act": ("quick_gelu",), "num_channels": (3,)}, src)
    width, heads = vit["hidden_size"], vit["num_attention_heads"]
    if width % heads:
        raise PixmoError(f"{heads} heads do not divide hidden_size {width}", file=src,
                         field="num_attention_heads")
    blocks = vit["num_hidden_layers"]
    return {"width": width, "heads": heads, "head_dim": width // heads,
            "layers": max(blocks - 1, 1), "mlp_hidden": vit["intermediate_size"],
            "patch_size": vit["patch_size"], "image_size": vit["image_size"],
            "norm_eps": float(vit["layer_norm_eps"]), "feature_layers": (-2, -9)}, blocks


# ---- the plan: the config, and where each stored tensor goes -------------------------------

@dataclass(frozen=True)
class Source:
    """One part's weights: its directory and how stored names become ours."""

    directory: Path
    table: dict[str, Target]
    strip: str = ""  # a prefix stored names may carry (CLIP's "vision_model.")
    foreign: tuple[str, ...] = ()  # names under these prefixes belong to another model
    blocks: tuple[str, int] | None = None  # (template prefix, n): blocks n and up are dropped

    def target(self, name: str) -> tuple[str, str] | None:
        """(our name, slot) of a stored tensor, or None when it is dropped on purpose."""
        bare = name.removeprefix(self.strip)
        if self.foreign and bare.startswith(self.foreign):
            return None
        template, indices = split_name(bare)
        if template not in self.table:
            raise PixmoError(f"tensor {name!r} has no place in a Molmo",
                             file=str(self.directory), field=name)
        target = self.table[template]
        if target is None or (self.blocks is not None and template.startswith(self.blocks[0])
                              and int(indices[0]) >= self.blocks[1]):
            return None
        return target[0].format(*indices), target[1]


@dataclass(frozen=True)
class Plan:
    """What ``from_parts`` builds: the config, the two weight sources, a tied LM head or not."""

    cfg: MolmoConfig
    sources: tuple[Source, ...]
    tied: bool = False


def nest(overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``vision_feature_layers=...`` -> ``{"vision": {"feature_layers": ...}}``."""
    nested: dict[str, dict[str, Any]] = {part: {} for part in PARTS}
    for key, value in overrides.items():
        part, _, name = key.partition("_")
        if part not in nested or not name:
            raise PixmoError(f"unknown override {key!r}: expected <part>_<field> with part one "
                             f"of {', '.join(PARTS)}", field=key)
        nested[part][name] = value
    return nested


def plan_parts(llm: str | Path, vision: str | Path, overrides: dict[str, dict[str, Any]]) -> Plan:
    """Read both configs into a MolmoConfig (``overrides``: fields per part that the parts do
    not fix, such as ``vision.feature_layers`` or ``llm.max_seq_len``) and plan the loading."""
    (llm_cfg, llm_src), (vit_cfg, vit_src) = _read_json(Path(llm)), _read_json(Path(vision))
    llm_fields, family = _llm_fields(llm_cfg, llm_src)
    vit_fields, blocks = _vision_fields(vit_cfg, vit_src)
    files = {"vision": vit_src, "llm": llm_src}
    for part, names in FROM_CONFIGS.items():
        for name in set(names) & set(overrides.get(part, {})):
            raise PixmoError(f"comes from {files[part]}: the pretrained weights fix it",
                             field=f"{part}.{name}")
    connector = {"pool_heads": vit_fields["heads"], "pool_head_dim": vit_fields["head_dim"],
                 "projector_hidden": llm_fields["mlp_hidden"]}
    data = {part: {**base, **overrides.get(part, {})}
            for part, base in (("vision", vit_fields), ("connector", connector),
                               ("llm", llm_fields))}
    try:
        cfg = MolmoConfig.from_dict(data, where="model")
    except PixmoError as exc:
        part = (exc.field or "").split(".")[1:2]
        raise exc.located(file=files.get(part[0]) if part else None) from None
    if cfg.vision.layers > blocks:
        raise PixmoError(f"{cfg.vision.layers} ViT blocks asked for, the CLIP model has "
                         f"{blocks}", file=vit_src, field="vision.layers")
    sources = (Source(Path(llm), family.table),
               Source(Path(vision), CLIP_TABLE, strip="vision_model.", foreign=CLIP_FOREIGN,
                      blocks=("encoder.layers.", cfg.vision.layers)))
    return Plan(cfg, sources, bool(llm_cfg.get("tie_word_embeddings", False)))


# ---- building ------------------------------------------------------------------------------

def _slots(cfg: MolmoConfig) -> dict[str, tuple[int, int]]:
    """(first row, rows) of each slot of a fused tensor."""
    llm = cfg.llm
    q, kv, h = llm.heads * llm.head_dim, llm.kv_heads * llm.head_dim, llm.mlp_hidden
    return {"q": (0, q), "k": (q, kv), "v": (q + kv, kv), "up": (0, h), "gate": (h, h)}


def is_fresh(name: str) -> bool:
    """Parameters no part provides: the connector and Molmo's extra token rows."""
    return name.startswith("connector.") or name == "llm.embed.extra"


@torch.no_grad()
def _fill(model: Molmo, plan: Plan) -> None:
    """Copy every stored tensor into its place, one at a time; every pretrained parameter must
    be filled exactly once (a tied LM head is a copy of the embedding)."""
    params = dict(model.named_parameters())
    slots = _slots(plan.cfg)
    filled: dict[str, int] = {}  # rows filled per parameter
    seen: set[tuple[str, str]] = set()
    for source in plan.sources:
        for name, load, shape in stored_tensors(weight_files(source.directory)):
            target = source.target(name)
            if target is None:
                continue
            ours, slot = target
            if ours not in params or target in seen:
                why = "is stored twice" if target in seen else "does not exist in this config"
                raise PixmoError(f"tensor {name!r} (ours: {ours!r}) {why}",
                                 file=str(source.directory), field=name)
            seen.add(target)
            start, rows = slots[slot] if slot else (0, params[ours].shape[0])
            place = params[ours][start:start + rows]
            tensor = RESHAPE.get(ours, lambda t: t)(load())
            if tensor.shape != place.shape:
                raise PixmoError(f"tensor {name!r} has shape {list(shape)}, the model expects "
                                 f"{list(place.shape)}", file=str(source.directory), field=name)
            place.copy_(tensor)
            filled[ours] = filled.get(ours, 0) + rows
    if plan.tied and "llm.lm_head.weight" not in filled and "llm.embed.base" in filled:
        params["llm.lm_head.weight"].copy_(params["llm.embed.base"])
        filled["llm.lm_head.weight"] = params["llm.lm_head.weight"].shape[0]
    missing = [n for n, p in params.items() if not is_fresh(n) and filled.get(n) != p.shape[0]]
    if missing:
        raise PixmoError(f"{len(missing)} tensors missing, e.g. {missing[:5]}",
                         file=str(plan.sources[missing[0].startswith("vision.")].directory))


@torch.no_grad()
def init_fresh(model: Molmo) -> None:
    """The official init of what no part provides: N(0, 0.02) connector weights and extra
    embedding rows, zero biases and pad embeddings."""
    for module in model.connector.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    if model.connector.pad_embed is not None:
        nn.init.zeros_(model.connector.pad_embed)
    nn.init.normal_(model.llm.embed.extra, std=INIT_STD)


def from_parts(llm: str | Path, vision: str | Path, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", **overrides: Any) -> Molmo:
    """A Molmo from a transformers causal-LM directory and a CLIP directory.

    ``overrides`` set the fields the parts do not fix, named ``<part>_<field>``:
    ``vision_feature_layers=(-1, -3)``, ``vision_layers=24`` (all of CLIP's blocks),
    ``llm_max_seq_len=4096``, ``llm_vocab_size=...`` (tokenizer size, when smaller than the
    embedding), ``connector_pool_size=...``. The fresh parts use the global torch RNG.
    """
    planned = plan_parts(llm, vision, nest(overrides))
    with torch.device("meta"):
        model = Molmo(planned.cfg)
    model = model.to(dtype).to_empty(device=device)
    _fill(model, planned)
    init_fresh(model)
    log.info("built a Molmo from %s and %s", llm, vision)
    return model.eval()
