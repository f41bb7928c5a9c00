"""Model weights on disk for sharing and inference: official hub layout and ours, no resume state.

``from_pretrained``, ``save_pretrained`` and ``convert``: strict name maps, lazy loading. Training
resumes from ``molmo/train/checkpoint.py`` instead, which adds optimizer, loader and RNG state.

Official layout: ``config.json`` (+ optional ``vision_backbone.json``) and safetensors with
``model.``-prefixed names, one file or shards listed in ``model.safetensors.index.json``.
Our layout: ``config.json`` with ``{"format": "molmo-toolkit", "model": {...}}`` and safetensors
named exactly as ``Molmo.state_dict()``.

Name maps are one table per LLM family (dense: Qwen2/OLMo; MoE: OLMoE), layer and expert
indices written ``{}``. Every official tensor keeps its shape in our modules (the fused
``att_proj`` [q|k|v] and ``ff_proj`` [up|gate] are kept fused), so no tensor needs reshaping.
Loading builds the model on the meta device, allocates it once, then copies tensors in one at a
time shard by shard: a checkpoint is never held twice in memory.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch

from molmo.model.config import MolmoConfig
from molmo.model.molmo import Molmo
from molmo.model.official import from_official_config, to_official_config
from pixmo.atomic import atomic_directory
from pixmo.errors import PixmoError

log = logging.getLogger(__name__)

FORMAT = "molmo-toolkit"
FORMAT_VERSION = 1
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 2**30

_VIT = "model.vision_backbone.image_vit."
_BLK = "model.transformer.blocks.{}."


def _linear(official: str, ours: str, bias: bool = True) -> dict[str, str]:
    names = {f"{official}.weight": f"{ours}.weight"}
    if bias:
        names[f"{official}.bias"] = f"{ours}.bias"
    return names


VISION_MAP: dict[str, str] = {
    _VIT + "patch_embedding.weight": "vision.patch_embed.weight",
    _VIT + "class_embedding": "vision.class_embed",
    _VIT + "positional_embedding": "vision.pos_embed",
    **_linear(_VIT + "pre_ln", "vision.pre_ln"),
    **{k: v for proj in ("wq", "wk", "wv", "wo") for k, v in _linear(
        _VIT + f"transformer.resblocks.{{}}.attention.{proj}", f"vision.blocks.{{}}.attn.{proj}"
    ).items()},
    **_linear(_VIT + "transformer.resblocks.{}.attention_norm", "vision.blocks.{}.attn_norm"),
    **_linear(_VIT + "transformer.resblocks.{}.feed_forward.w1", "vision.blocks.{}.mlp.fc1"),
    **_linear(_VIT + "transformer.resblocks.{}.feed_forward.w2", "vision.blocks.{}.mlp.fc2"),
    **_linear(_VIT + "transformer.resblocks.{}.ffn_norm", "vision.blocks.{}.mlp_norm"),
    **{k: v for proj in ("wq", "wk", "wv", "wo") for k, v in _linear(
        f"model.vision_backbone.image_pooling_2d.{proj}", f"connector.pool.{proj}").items()},
    # The official projector computes w2(silu(w1 x) * w3 x).
    "model.vision_backbone.image_projector.w1.weight": "connector.projector.gate.weight",
    "model.vision_backbone.image_projector.w3.weight": "connector.projector.up.weight",
    "model.vision_backbone.image_projector.w2.weight": "connector.projector.down.weight",
    "model.vision_backbone.pad_embed": "connector.pad_embed",
    "model.transformer.wte.embedding": "llm.embed.base",
    "model.transformer.wte.new_embedding": "llm.embed.extra",
    "model.transformer.ln_f.weight": "llm.norm.weight",
}

# Molmo-7B-D / 72B (Qwen2) and 7B-O (OLMo-1024): norms and projections sit on the block.
DENSE_MAP: dict[str, str] = {
    **VISION_MAP,
    **_linear(_BLK + "att_proj", "llm.blocks.{}.attn.qkv"),
    _BLK + "attn_out.weight": "llm.blocks.{}.attn.out.weight",
    _BLK + "q_norm.weight": "llm.blocks.{}.attn.q_norm.weight",
    _BLK + "k_norm.weight": "llm.blocks.{}.attn.k_norm.weight",
    _BLK + "attn_norm.weight": "llm.blocks.{}.attn_norm.weight",
    _BLK + "ff_norm.weight": "llm.blocks.{}.mlp_norm.weight",
    _BLK + "ff_proj.weight": "llm.blocks.{}.mlp.up_gate.weight",
    _BLK + "ff_out.weight": "llm.blocks.{}.mlp.down.weight",
    "model.transformer.ff_out.weight": "llm.lm_head.weight",
}

# MolmoE-1B (OLMoE, reference section 4.2): per-block tensors under .attn. / .mlp., one tensor
# per expert and projection, LM head outside the model. prefix.
MOE_MAP: dict[str, str] = {
    **VISION_MAP,
    _BLK + "attn.att_proj.weight": "llm.blocks.{}.attn.qkv.weight",
    _BLK + "attn.att_proj.bias": "llm.blocks.{}.attn.qkv.bias",
    _BLK + "attn.attn_out.weight": "llm.blocks.{}.attn.out.weight",
    _BLK + "attn.q_norm.weight": "llm.blocks.{}.attn.q_norm.weight",
    _BLK + "attn.k_norm.weight": "llm.blocks.{}.attn.k_norm.weight",
    _BLK + "attn.attn_norm.weight": "llm.blocks.{}.attn_norm.weight",
    _BLK + "mlp.ff_norm.weight": "llm.blocks.{}.mlp_norm.weight",
    _BLK + "mlp.gate.weight": "llm.blocks.{}.mlp.router.weight",
    _BLK + "mlp.experts.{}.gate_proj.weight": "llm.blocks.{}.mlp.experts.{}.gate.weight",
    _BLK + "mlp.experts.{}.up_proj.weight": "llm.blocks.{}.mlp.experts.{}.up.weight",
    _BLK + "mlp.experts.{}.down_proj.weight": "llm.blocks.{}.mlp.experts.{}.down.weight",
    "lm_head.weight": "llm.lm_head.weight",
}

_INDEX = re.compile(r"\.(\d+)(?=\.)")


def family_map(cfg: MolmoConfig) -> dict[str, str]:
    """The official -> ours name table for this config's LLM family."""
    return MOE_MAP if cfg.llm.moe_experts else DENSE_MAP


def split_name(name: str) -> tuple[str, list[str]]:
    """'a.3.b.7.c' -> ('a.{}.b.{}.c', ['3', '7'])."""
    return _INDEX.sub(".{}", name), _INDEX.findall(name)


def official_to_ours(name: str, table: dict[str, str]) -> str:
    template, indices = split_name(name)
    if template not in table:
        raise PixmoError(f"checkpoint tensor {name!r} has no mapping", field=name)
    return table[template].format(*indices)


def ours_to_official(name: str, table: dict[str, str]) -> str:
    inverse = {v: k for k, v in table.items()}
    template, indices = split_name(name)
    if template not in inverse:
        raise PixmoError(f"model tensor {name!r} has no official name", field=name)
    return inverse[template].format(*indices)


# ---- reading -------------------------------------------------------------------------------

def detect_layout(path: str | Path) -> Literal["ours", "official"]:
    """Which layout a checkpoint directory holds, from its config.json."""
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise PixmoError("no config.json in checkpoint directory", file=str(path))
    data = json.loads(config.read_text())
    if data.get("format") == FORMAT:
        return "ours"
    if data.get("model_type") == "molmo" or "hidden_size" in data or "d_model" in data:
        return "official"
    raise PixmoError("neither a molmo-toolkit nor an official Molmo config", file=str(config))


def read_config(path: str | Path) -> tuple[MolmoConfig, Literal["ours", "official"]]:
    """The model config of a checkpoint directory and which layout it is in."""
    path = Path(path)
    layout = detect_layout(path)
    if layout == "official":
        return from_official_config(path / "config.json"), layout
    data = json.loads((path / "config.json").read_text())
    if data.get("format_version") != FORMAT_VERSION:
        raise PixmoError(f"unsupported format_version {data.get('format_version')!r}",
                         file=str(path / "config.json"), field="format_version")
    return MolmoConfig.from_dict(data["model"], source=str(path / "config.json")), layout


def weight_files(path: str | Path) -> list[Path]:
    """Safetensors files of a checkpoint directory (sharded via the index, or one file)."""
    path = Path(path)
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [path / f for f in dict.fromkeys(weight_map.values())]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    extra = " (pickle .bin weights are not read; convert them to safetensors first)" if any(
        path.glob("*.bin")) else ""
    raise PixmoError(f"no model.safetensors or {INDEX_FILE}{extra}", file=str(path))


def stored_tensors(files: list[Path]) -> Iterator[tuple[str, Callable[[], torch.Tensor],
                                                         tuple[int, ...]]]:
    """(name, load, shape) per stored tensor, one shard open at a time; ``load`` reads lazily."""
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                shape = tuple(f.get_slice(name).get_shape())
                yield name, (lambda f=f, name=name: f.get_tensor(name)), shape


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
                       "F64": torch.float64}


def _stored_dtype(files: list[Path]) -> torch.dtype:
    """The dtype the weights are stored in, read from the header (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt", device="cpu") as f:
        name = next(iter(f.keys()))
        code = f.get_slice(name).get_dtype()
    if code not in _SAFETENSORS_DTYPES:
        raise PixmoError(f"tensor {name!r} is stored as {code}, not a float type",
                         file=str(files[0]), field=name)
    return _SAFETENSORS_DTYPES[code]


def load_checkpoint(path: str | Path, *, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu") -> Molmo:
    """Load either layout strictly: every stored tensor must map onto a model parameter of the
    same shape, and every parameter must be filled; errors name the tensor."""
    path = Path(path)
    cfg, layout = read_config(path)
    files = weight_files(path)
    table = family_map(cfg)
    with torch.device("meta"):
        model = Molmo(cfg)
    model = model.to(dtype or _stored_dtype(files)).to_empty(device=device)
    params = dict(model.named_parameters())
    filled: set[str] = set()
    for name, load, shape in stored_tensors(files):
        ours = official_to_ours(name, table) if layout == "official" else name
        if ours not in params:
            raise PixmoError(f"checkpoint tensor {name!r} (ours: {ours!r}) does not exist in a "
                             "model built from this config", file=str(path), field=name)
        if shape != tuple(params[ours].shape):
            raise PixmoError(f"checkpoint tensor {name!r} has shape {list(shape)}, the model "
                             f"expects {list(params[ours].shape)}", file=str(path), field=name)
        if ours in filled:
            raise PixmoError(f"tensor {name!r} stored twice", file=str(path), field=name)
        with torch.no_grad():
            params[ours].copy_(load())
        filled.add(ours)
    missing = sorted(set(params) - filled)
    if missing:
        shown = missing if layout == "ours" else [ours_to_official(m, table) for m in missing]
        raise PixmoError(f"{len(missing)} tensors missing from checkpoint, e.g. {shown[:5]}",
                         file=str(path))
    log.info("loaded %s checkpoint %s (%d tensors)", layout, path, len(filled))
    return model.eval()


def from_pretrained(path: str | Path, *, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu") -> Molmo:
    """Load a model from a checkpoint directory in either layout (detected from config.json)."""
    return load_checkpoint(path, dtype=dtype, device=device)


# ---- writing -------------------------------------------------------------------------------

class _ShardWriter:
    """Writes named tensors into safetensors shards of at most ``max_bytes`` (plus an index when
    there is more than one), inside a directory that the caller renames into place."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory, self.max_bytes = directory, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending[name] = tensor.detach().to("cpu").contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        file = self.directory / f"shard-{len(self.files):05d}.safetensors"
        save_file(self.pending, str(file), metadata={"format": "pt"})
        self.files.append((file, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending or not self.files:
            self._flush()
        if len(self.files) == 1:
            os.replace(self.files[0][0], self.directory / "model.safetensors")
            return
        weight_map = {}
        for i, (file, names) in enumerate(self.files):
            final = f"model-{i + 1:05d}-of-{len(self.files):05d}.safetensors"
            os.replace(file, self.directory / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _write_dir(path: Path, overwrite: bool, fill: Callable[[Path], None]) -> Path:
    """Run ``fill`` on a temporary sibling directory, then rename it to ``path``."""
    with atomic_directory(path, overwrite=overwrite) as tmp:
        fill(tmp)
    return path


def _write_config(directory: Path, cfg: MolmoConfig, layout: Literal["ours", "official"]) -> None:
    if layout == "ours":
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": cfg.to_dict()}
        (directory / "config.json").write_text(json.dumps(data, indent=2) + "\n")
        return
    official, vision = to_official_config(cfg)
    (directory / "config.json").write_text(json.dumps(official, indent=2) + "\n")
    if vision is not None:
        (directory / "vision_backbone.json").write_text(json.dumps(vision, indent=2) + "\n")


def save_pretrained(model: Molmo, path: str | Path, *,
                    layout: Literal["ours", "official"] = "ours", overwrite: bool = False,
                    max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write ``model`` as a checkpoint directory (ours by default, or the official layout)."""
    table = family_map(model.cfg)

    def fill(directory: Path) -> None:
        writer = _ShardWriter(directory, max_shard_bytes)
        for name, tensor in model.state_dict().items():
            writer.add(name if layout == "ours" else ours_to_official(name, table), tensor)
        writer.close()
        _write_config(directory, model.cfg, layout)

    return _write_dir(Path(path), overwrite, fill)


def convert(src: str | Path, dst: str | Path, *, to: Literal["ours", "official"],
            overwrite: bool = False, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Convert a checkpoint directory between layouts, tensor by tensor, bit-exact.

    Names and shapes are checked against a meta-device model built from the config, with the
    same strictness as loading; no model is ever materialised.
    """
    src, dst = Path(src), Path(dst)
    cfg, layout = read_config(src)
    table = family_map(cfg)
    with torch.device("meta"):
        expected = {n: tuple(p.shape) for n, p in Molmo(cfg).named_parameters()}

    def fill(directory: Path) -> None:
        writer = _ShardWriter(directory, max_shard_bytes)
        seen: set[str] = set()
        for name, load, shape in stored_tensors(weight_files(src)):
            ours = official_to_ours(name, table) if layout == "official" else name
            if expected.get(ours) != shape:
                raise PixmoError(f"tensor {name!r} with shape {list(shape)} does not fit the "
                                 f"config (expects {expected.get(ours)})", file=str(src),
                                 field=name)
            seen.add(ours)
            writer.add(ours if to == "ours" else ours_to_official(ours, table), load())
        missing = sorted(set(expected) - seen)
        if missing:
            raise PixmoError(f"{len(missing)} tensors missing, e.g. {missing[:5]}", file=str(src))
        writer.close()
        _write_config(directory, cfg, to)

    return _write_dir(dst, overwrite, fill)
