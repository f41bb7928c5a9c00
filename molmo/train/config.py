"""The training run's configuration: one YAML file, one small dataclass per component.

``TrainConfig.from_yaml`` refuses unknown keys and validates every field; ``to_yaml`` writes the
resolved config with every default spelled out (``molmo train --print-config``) and is recorded
in every checkpoint. Defaults follow the official recipe (reference ``molmo.md`` section 7).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from molmo.data.config import DataConfig
from molmo.model.config import MolmoConfig, preset
from molmo.preprocess.config import PreprocessConfig
from pixmo.config import (
    above,
    at_least,
    between,
    check_fields,
    from_mapping,
    load_config,
    one_of,
    to_plain,
)
from pixmo.errors import ConfigError, PixmoError

STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
GROUPS = ("connector", "vit", "llm")
MODEL_PARTS = ("vision", "connector", "llm")  # MolmoConfig's sections
LORA_TARGETS = ("llm.attn", "llm.mlp", "vision.attn", "vision.mlp", "connector")


@dataclass(frozen=True)
class ModelSection:
    """Where the weights start: a preset (random init, the default ``tiny``), a checkpoint
    directory, or pretrained parts as the official recipe starts (``llm``: a transformers
    causal-LM directory, ``vision``: a CLIP one; ``molmo.model.parts``).

    ``overrides``: nested fields merged into the preset's or the parts' config
    (``{vision: {layers: 2}}``). ``tokenizer``: a tokenizer directory; None means the
    checkpoint or ``llm`` directory.
    """

    preset: str | None = None
    checkpoint: str | None = None
    llm: str | None = None
    vision: str | None = None
    tokenizer: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.llm is None) != (self.vision is None):
            raise ConfigError("needs both llm and vision (a Hugging Face LLM and a CLIP vision "
                              "tower)", field="ModelSection")
        starts = [self.preset, self.checkpoint, self.llm]
        if sum(start is not None for start in starts) > 1:
            raise ConfigError("needs exactly one of preset, checkpoint and llm+vision",
                              field="ModelSection")
        if all(start is None for start in starts):
            object.__setattr__(self, "preset", "tiny")
        if self.tokenizer is None and self.preset is not None:
            raise ConfigError("is required when starting from a preset",
                              field="ModelSection.tokenizer")
        if self.checkpoint is not None and self.overrides:
            raise ConfigError("apply to a preset or parts, not to a checkpoint",
                              field="ModelSection.overrides")
        for part, values in self.overrides.items():
            if part not in MODEL_PARTS or not isinstance(values, dict):
                raise PixmoError(f"unknown model part {part!r} (expected a mapping for one of "
                                 f"{list(MODEL_PARTS)})", field="model.overrides")

    @property
    def tokenizer_dir(self) -> str:
        return self.tokenizer or self.checkpoint or self.llm or ""

    def molmo_config(self) -> MolmoConfig:
        """The architecture of a preset start (checkpoints carry their own config)."""
        assert self.preset is not None
        base = preset(self.preset).to_dict()
        for part, values in self.overrides.items():
            base[part].update(values)
        return MolmoConfig.from_dict(base, where="model.overrides")


@dataclass(frozen=True)
class GroupConfig:
    """One parameter group's optimiser settings (connector, ViT or LLM)."""

    lr: float
    warmup_steps: int
    max_grad_norm: float = 1.0  # clipped separately per group; 0 = no clipping
    frozen: bool = False

    def __post_init__(self) -> None:
        check_fields(self, lr=at_least(0), warmup_steps=at_least(0), max_grad_norm=at_least(0))


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with separate connector / ViT / LLM groups; warmup then cosine to
    ``final_lr_fraction`` of each group's peak at the last step. ``z_loss`` scales the mean
    squared logsumexp of the supervised positions."""

    connector: GroupConfig = GroupConfig(2e-4, 200)
    vit: GroupConfig = GroupConfig(6e-6, 2000)
    llm: GroupConfig = GroupConfig(2e-5, 2000)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-6
    weight_decay: float = 0.0
    final_lr_fraction: float = 0.1
    z_loss: float = 1e-4

    def __post_init__(self) -> None:
        check_fields(self, final_lr_fraction=between(0, 1), z_loss=at_least(0),
                     weight_decay=at_least(0), eps=above(0))
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"must be two numbers in [0, 1), got {self.betas}",
                              field="OptimConfig.betas")
        if all(getattr(self, g).frozen for g in GROUPS):
            raise ConfigError(f"freezes every group ({', '.join(GROUPS)}), nothing would "
                              f"train", field="OptimConfig")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (``molmo.train.lora``, through peft): the base model stays frozen and only
    the adapters train. ``targets`` name groups of linear layers: ``llm.attn`` (qkv, out),
    ``llm.mlp`` (dense or MoE experts), ``vision.attn``, ``vision.mlp`` (the ViT blocks that
    run) and ``connector`` (attention pool and projector)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("llm.attn", "llm.mlp")

    def __post_init__(self) -> None:
        check_fields(self, rank=at_least(1), alpha=above(0),
                     dropout=between(0, 1, open_high=True))
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            raise ConfigError(f"unknown target {unknown[0]!r} (expected some of "
                              f"{', '.join(LORA_TARGETS)})" if unknown else
                              f"must name at least one of {', '.join(LORA_TARGETS)}",
                              field="LoraConfig.targets")


@dataclass(frozen=True)
class ParallelConfig:
    """``strategy`` applies under torchrun with more than one rank. ``precision`` auto: bf16
    compute (FSDP bf16 params with fp32 reduce, or autocast under DDP) on GPU, fp32 on CPU."""

    strategy: str = "fsdp"
    activation_checkpointing: bool = False
    precision: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        check_fields(self, strategy=one_of(STRATEGIES), precision=one_of(PRECISIONS),
                     device=one_of(DEVICES))


@dataclass(frozen=True)
class CheckpointConfig:
    """Save every ``interval`` steps (0: never periodically) and, with ``final``, after the
    last step; keep the newest ``keep``. ``export`` writes the final model with
    ``save_pretrained`` (plus the tokenizer) to ``run_dir/model``."""

    interval: int = 1000
    keep: int = 2
    final: bool = True
    export: bool = True

    def __post_init__(self) -> None:
        check_fields(self, interval=at_least(0), keep=at_least(1))


@dataclass(frozen=True)
class MetricsConfig:
    """``peak_tflops``: the accelerator's dense bf16 peak for MFU (None: known GPUs only)."""

    log_interval: int = 10
    tensorboard: bool = True
    progress_bar: bool = True
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        check_fields(self, log_interval=at_least(1))


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation every ``interval`` steps (0: never during training).

    ``pointing``: shards whose point sets are asked as point-then-count questions and scored
    by greedy generation; ``captions``: shards whose captions give a teacher-forced loss.
    """

    interval: int = 0
    pointing: str | None = None
    captions: str | None = None
    max_examples: int = 64
    batch_size: int = 4
    max_new_tokens: int = 64
    threshold: float = 5.0  # pointing hit distance, percent of the image diagonal
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, interval=at_least(0), max_examples=at_least(1),
                     batch_size=at_least(1), max_new_tokens=at_least(1))


@dataclass(frozen=True)
class TrainConfig:
    """A whole run. ``global_batch_size`` = data.batch_size (per device) x ranks x
    accumulation steps; the accumulation is derived once the world size is known."""

    run_dir: str
    model: ModelSection
    data: DataConfig
    preprocess: PreprocessConfig = PreprocessConfig(official_mask_quirk=False,
                                                    conversation_weighting="root_subsegments")
    optim: OptimConfig = OptimConfig()
    parallel: ParallelConfig = ParallelConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics: MetricsConfig = MetricsConfig()
    eval: EvalConfig = EvalConfig()
    lora: LoraConfig | None = None  # None: full fine-tuning
    steps: int = 1000
    global_batch_size: int = 128
    seed: int = 6198

    def __post_init__(self) -> None:
        check_fields(self, steps=at_least(1), global_batch_size=at_least(1))

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per rank and step."""
        per_step = self.data.batch_size * world_size
        if self.global_batch_size % per_step:
            raise PixmoError(f"global_batch_size {self.global_batch_size} is not a multiple of "
                             f"data.batch_size {self.data.batch_size} x {world_size} ranks",
                             field="global_batch_size")
        return self.global_batch_size // per_step

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_mapping(cls, data, "config")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return load_config(cls, path)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)
