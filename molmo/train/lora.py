"""LoRA fine-tuning through peft: adapters put into our plain torch modules, merged for export.

The model stays a :class:`Molmo` (peft's ``inject_adapter_in_model`` replaces the targeted
``nn.Linear`` layers in place, so DDP, FSDP2, activation checkpointing and the optimizer groups
see an ordinary module tree); peft freezes every base weight. The readable targets of
``LoraConfig.targets`` map to module-name patterns here. A run's base is identified by where it
came from and a SHA-256 of its weights, so resuming onto another base is refused. peft (which
imports transformers) is imported only by a LoRA run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from molmo.model.molmo import Molmo
from molmo.train.config import LoraConfig, ModelSection
from pixmo.errors import PixmoError

if TYPE_CHECKING:
    import peft

ADAPTER = "default"
_CHUNK = 1 << 20

# Our module names (molmo/model/{llm,vision,connector}.py) per readable target; the fused
# LLM projections (attn.qkv, mlp.up_gate) are plain nn.Linear layers and get one adapter each.
_PATTERNS = {
    "llm.attn": r"llm\.blocks\.\d+\.attn\.(qkv|out)",
    "llm.mlp": r"llm\.blocks\.\d+\.mlp\.(up_gate|down|experts\.\d+\.(gate|up|down))",
    "vision.attn": r"vision\.blocks\.({blocks})\.attn\.w[qkvo]",
    "vision.mlp": r"vision\.blocks\.({blocks})\.mlp\.fc[12]",
    "connector": r"connector\.(pool\.w[qkvo]|projector\.(gate|up|down))",
}


def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise PixmoError(f"needs peft ({exc}): pip install 'pixmo-toolkit[lora]'",
                         field="lora") from exc
    return peft


def peft_config(cfg: LoraConfig, model: Molmo) -> peft.LoraConfig:
    """peft's config for ``cfg`` on ``model``: a regex over module names that peft matches in
    full. Only the ViT blocks that run are targeted (the later ones never get a gradient)."""
    peft = _peft()
    return peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=target_pattern(cfg, model), bias="none")


def target_pattern(cfg: LoraConfig, model: Molmo) -> str:
    """The regex over module names (matched in full) of the layers that get adapters."""
    running = "|".join(str(i) for i in range(max(model.vision.feature_blocks) + 1))
    return "|".join(f"(?:{_PATTERNS[t].format(blocks=running)})" for t in cfg.targets)


def apply(model: Molmo, cfg: LoraConfig) -> Molmo:
    """Put fresh adapters (B = 0: the model's outputs are unchanged) into ``model`` in place;
    only adapter weights stay trainable."""
    peft = _peft()
    peft.inject_adapter_in_model(peft_config(cfg, model), model, adapter_name=ADAPTER)
    return model


def merged(model: Molmo, cfg: LoraConfig, state: dict[str, torch.Tensor]) -> Molmo:
    """A plain Molmo with the adapters of ``state`` (a full state dict of a model with
    adapters, as training holds it, left unchanged) merged into its base weights by peft.
    ``model`` gives the architecture only."""
    peft = _peft()
    with torch.device("meta"):
        plain = Molmo(model.cfg)
    tuner = peft.LoraModel(plain, peft_config(cfg, plain), ADAPTER, low_cpu_mem_usage=True)
    # peft merges into the base weights in place: copies, so ``state`` (which may share
    # storage with the training model) is left as it was
    tuner.model.load_state_dict({k: v.clone() if k.endswith(".base_layer.weight") else v
                                 for k, v in state.items()}, assign=True)
    out = tuner.merge_and_unload()
    assert isinstance(out, Molmo)
    return out


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _hash_files(h: Any, files: list[Path]) -> None:
    for path in files:
        h.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)


def _weight_files(directory: str) -> list[Path]:
    return sorted(Path(directory).glob("*.safetensors"))


def _hash_tensors(h: Any, model: nn.Module) -> None:
    for name, tensor in model.state_dict().items():
        h.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\0".encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())


def base_identity(section: ModelSection, model: Molmo, seed: int) -> dict[str, str]:
    """Where the base came from and a SHA-256 of its weights: the safetensors files of a
    checkpoint or of the llm and vision directories (the overrides hashed too), or a preset's
    initial tensors (which the seed decides). Call it before :func:`apply`."""
    h = hashlib.sha256(json.dumps(section.overrides, sort_keys=True).encode())
    if section.checkpoint is not None:
        where = section.checkpoint
        _hash_files(h, _weight_files(section.checkpoint))
    elif section.llm is not None and section.vision is not None:
        where = f"llm {section.llm}, vision {section.vision}"
        _hash_files(h, _weight_files(section.llm) + _weight_files(section.vision))
    else:
        where = f"preset {section.preset} (seed {seed})"
        _hash_tensors(h, model)
    return {"base": where, "sha256": h.hexdigest()}
