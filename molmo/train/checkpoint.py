"""Resume state of a training run (``run_dir/checkpoints/step_N``), not a model to share.

Model and optimizer go through ``torch.distributed.checkpoint`` (each rank writes its own shards, in
parallel), plus per-rank JSON for the loader position and RNG states, and the step and resolved
config.

A checkpoint is written under a temporary name and renamed into place by rank 0 after every rank
has finished, so a directory ``step_NNNNNNNN`` is always complete; ``meta.json`` inside it is the
last file written. Loading reads those fixed top-level keys back.

A LoRA run (``base`` given) saves only what trains (the adapters and their optimizer state) and
records the base's identity (where it came from and a hash of its weights) in ``meta.json``;
restoring onto a different base, or with different LoRA settings, is refused.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from molmo.data.loader import MolmoLoader
from molmo.train.config import CheckpointConfig
from molmo.train.parallel import World, barrier
from pixmo.atomic import atomic_write_bytes
from pixmo.errors import PixmoError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_PREFIX = "step_"


def rng_state() -> dict[str, Any]:
    """Every RNG this process draws from, as JSON values."""
    def b64(t: torch.Tensor) -> str:
        return base64.b64encode(t.numpy().tobytes()).decode()

    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {"torch": b64(torch.get_rng_state()), "python": random.getstate(),
                             "numpy": [name, key.tolist(), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = b64(torch.cuda.get_rng_state())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    def tensor(s: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensor(state["cuda"]))


@dataclass(frozen=True)
class Restored:
    step: int
    path: Path


class Checkpointer:
    """Saves to and restores from ``run_dir/checkpoints``; every method is a collective call.
    ``base``: a LoRA run's base identity and settings (``molmo.train.lora``); None saves every
    weight."""

    def __init__(self, run_dir: Path, cfg: CheckpointConfig, world: World,
                 base: dict[str, Any] | None = None) -> None:
        self.root = run_dir / "checkpoints"
        self.cfg, self.world, self.base = cfg, world, base

    def _options(self) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        # frozen weights (the whole base of a LoRA run) are left out, on saving and loading
        return StateDictOptions(ignore_frozen_params=self.base is not None,
                                strict=self.base is None)

    def committed(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.name.startswith(_PREFIX)
                 and (p / "meta.json").is_file()]
        return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             loader: MolmoLoader, config: dict[str, Any]) -> Path:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        final = self.root / f"{_PREFIX}{step:08d}"
        tmp = self.root / f".{final.name}.tmp"
        if self.world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer, options=self._options())
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / "dcp"))
        _write_json(tmp / f"rank_{self.world.rank:05d}.json",
                    {"step": step, "data_loader": loader.state_dict(), "rng": rng_state()})
        barrier()
        if self.world.is_main:
            _write_json(tmp / "meta.json", {"format_version": FORMAT_VERSION, "step": step,
                                            "world_size": self.world.world_size,
                                            "base": self.base, "config": config})
            os.replace(tmp, final)
            for old in self.committed()[:-self.cfg.keep]:
                shutil.rmtree(old)
            log.info("saved checkpoint %s", final)
        barrier()
        return final

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                loader: MolmoLoader) -> Restored | None:
        """Load the newest complete checkpoint; None when there is none."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        found = self.committed()
        if not found:
            return None
        path = found[-1]
        meta = json.loads((path / "meta.json").read_text())
        if meta["world_size"] != self.world.world_size:
            raise PixmoError(f"checkpoint was saved by {meta['world_size']} ranks, this run has "
                             f"{self.world.world_size}; exact resumption needs the same number",
                             file=str(path))
        check_base(meta.get("base"), self.base, path)
        model_sd, optim_sd = get_state_dict(model, optimizer, options=self._options())
        state = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(state, checkpoint_id=str(path / "dcp"))
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"], options=self._options())
        extra = json.loads((path / f"rank_{self.world.rank:05d}.json").read_text())
        loader.load_state_dict(extra["data_loader"])
        set_rng_state(extra["rng"])
        log.info("restored %s (step %d)", path, meta["step"])
        return Restored(meta["step"], path)

def check_base(saved: dict[str, Any] | None, base: dict[str, Any] | None, path: Path) -> None:
    """Refuse checkpoint ``path`` when the base or LoRA settings it was ``saved`` with are not
    ``base`` (None for both: full weights)."""
    if saved is None and base is None:
        return
    if saved is None or base is None:
        has, run = ("full weights", "LoRA") if saved is None else ("LoRA adapters", "no lora")
        raise PixmoError(f"checkpoint holds {has}, this run has {run} settings; resume "
                         f"with the config it was saved with", file=str(path))
    if saved["sha256"] != base["sha256"]:
        raise PixmoError(f"checkpoint's adapters were trained on base {saved['base']} "
                         f"(sha256 {saved['sha256'][:12]}), this run's base is "
                         f"{base['base']} (sha256 {base['sha256'][:12]})", file=str(path))
    if saved.get("lora") != base.get("lora"):
        raise PixmoError(f"checkpoint's LoRA settings {saved.get('lora')} differ from this "
                         f"run's {base.get('lora')}", file=str(path))


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj).encode())
