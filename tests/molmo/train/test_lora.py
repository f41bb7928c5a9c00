"""molmo/train/lora.py on the tiny preset, CPU: peft adapters on every target; a run changes
only adapter weights; the merged export gives the adapted model's logits; checkpoints hold the
adapters, their optimizer state and the base's identity; resuming is exact and refuses another
base; two ranks (DDP and FSDP2, real torchrun processes on gloo) equal one process."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from molmo.cli import main
from molmo.model.config import MolmoConfig, preset
from molmo.model.molmo import Molmo
from molmo.model.weights import from_pretrained
from molmo.preprocess.batching import normalize_images
from molmo.train import checkpoint as train_checkpoint
from molmo.train import lora, parallel
from molmo.train.config import LORA_TARGETS, LoraConfig, ModelSection, TrainConfig
from molmo.train.loop import (
    _micro_batches,
    build,
    export,
    export_checkpoint,
    train,
    train_step,
)
from pixmo.errors import PixmoError
from tests.molmo.train.test_loop import (
    launch,
    losses,
    setup,  # noqa: F401  (a fixture: shards, tokenizer)
    tiny_config,
    write_yaml,
)

STEPS = 4
LORA = {"rank": 4, "alpha": 8, "targets": list(LORA_TARGETS)}
WORLD = parallel.World(0, 0, 1, torch.device("cpu"), False)


def lora_config(run_dir: Path, data: Path, tok: Path, workers: int = 2,
                **sections: Any) -> dict[str, Any]:
    """Two loader threads in one process read the slots of two ranks with one each."""
    cfg = tiny_config(run_dir, data, tok, steps=STEPS, lora=LORA, **sections)
    cfg["data"].update(num_workers=workers, worker_type="thread")
    return cfg


def adapter_names(model: torch.nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters() if ".lora_" in n}


def checkpoint_tensors(step_dir: Path, tmp: Path) -> dict[str, Any]:
    """A checkpoint's dcp state, through one torch.save file in the new folder ``tmp``."""
    tmp.mkdir(parents=True)
    dcp_to_torch_save(step_dir / "dcp", tmp / "state.pt")
    return torch.load(tmp / "state.pt", weights_only=False)


@pytest.fixture(scope="module")
def single(setup):  # noqa: F811
    """The reference: one process, two micro-batches per step (the slots of two ranks)."""
    root, data, tok = setup
    train(TrainConfig.from_dict(lora_config(root / "single", data, tok)))
    return root / "single"


def test_targets_name_our_linear_layers():
    torch.manual_seed(0)
    model = Molmo(preset("tiny"))
    lora.apply(model, LoraConfig(rank=2, targets=("llm.attn", "connector")))
    names = adapter_names(model)
    assert "llm.blocks.0.attn.qkv.lora_A.default.weight" in names
    assert "connector.projector.gate.lora_B.default.weight" in names
    assert not any(n.startswith("vision.") or ".mlp." in n for n in names)
    trainable, total = lora.parameter_counts(model)
    assert trainable == sum(model.get_parameter(n).numel() for n in names) < total / 10
    everything = Molmo(preset("tiny"))
    lora.apply(everything, LoraConfig(rank=2, targets=LORA_TARGETS))
    run = max(everything.vision.feature_blocks)
    blocks = {int(n.split(".")[2]) for n in adapter_names(everything) if n.startswith("vision.")}
    assert blocks == set(range(run + 1))  # the ViT blocks that never run get no adapters
    moe = preset("tiny").to_dict()
    moe["llm"].update(moe_experts=2, moe_top_k=1)
    experts = Molmo(MolmoConfig.from_dict(moe))
    lora.apply(experts, LoraConfig(rank=2, targets=("llm.mlp",)))
    assert {n.split(".lora_")[0] for n in adapter_names(experts)} == {
        f"llm.blocks.{b}.mlp.experts.{e}.{p}" for b in range(2) for e in range(2)
        for p in ("gate", "up", "down")}  # the router stays as it is


def test_a_run_changes_only_adapters_and_exports_merged(
        setup, tmp_path, caplog, capsys):  # noqa: F811
    root, data, tok = setup
    cfg = TrainConfig.from_dict(lora_config(tmp_path / "run", data, tok, workers=0))
    with caplog.at_level(logging.INFO, logger="molmo.train.loop"):
        run = build(cfg, WORLD)
    assert any(r.getMessage().startswith("trainable parameters: ") for r in caplog.records)
    before = {n: t.clone() for n, t in run.model.state_dict().items()}
    batches = _micro_batches(run.loader)
    for step in range(1, 4):
        train_step(run, [next(batches) for _ in range(run.accumulation)], step)
    export(run, tmp_path / "model")  # merging leaves the training model as it was
    step_dir = run.checkpointer.save(3, run.model, run.optimizer, run.loader, cfg.to_dict())
    after = run.model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == adapter_names(run.model) and len(changed) == 2 * (3 * 6 + 7 + 2 * 4)
    merged = from_pretrained(tmp_path / "model")
    batch = normalize_images(next(batches)[0], run.loader.processor.config)
    inputs = (batch["input_ids"], batch["images"], batch["image_masks"], batch["image_input_idx"])
    run.model.eval()
    with torch.no_grad():
        adapted, plain = run.model(*inputs), merged(*inputs)
    assert (adapted - plain).abs().max() <= 1e-5
    assert set(merged.state_dict()) == set(Molmo(merged.cfg).state_dict())
    # molmo export: the checkpoint's adapters merged into a rebuilt base, as the run exports
    assert main(["export", str(step_dir), str(tmp_path / "exported")]) == 0
    again = from_pretrained(tmp_path / "exported").state_dict()
    for name, tensor in merged.state_dict().items():
        assert torch.equal(again[name], tensor), name
    meta = json.loads((step_dir / "meta.json").read_text())
    meta["base"]["sha256"] = "0" * 64  # adapters of another base
    (step_dir / "meta.json").write_text(json.dumps(meta))
    assert main(["export", str(step_dir), str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert "adapters were trained on base preset tiny (seed 1) (sha256 000000000000)" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "other").exists()


def test_checkpoint_holds_adapters_and_base_identity(single, tmp_path):
    step_dir = single / "checkpoints" / f"step_{STEPS:08d}"
    state = checkpoint_tensors(step_dir, tmp_path / "state")
    names = set(state["model"])
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert len(state["optimizer"]["state"]) == len(names)  # Adam moments of adapters only
    meta = json.loads((step_dir / "meta.json").read_text())
    assert meta["base"]["base"] == "preset tiny (seed 1)"
    assert len(meta["base"]["sha256"]) == 64 and meta["base"]["lora"]["rank"] == 4


def test_resume_is_exact_and_refuses_others(setup, single, tmp_path, monkeypatch):  # noqa: F811
    root, data, tok = setup
    raw = lora_config(tmp_path / "cut", data, tok)
    save = train_checkpoint.Checkpointer.save

    def save_then_stop(self, step, *args, **kwargs):
        path = save(self, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(train_checkpoint.Checkpointer, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.from_dict(raw))
    monkeypatch.undo()
    for change, message in ((dict(seed=2), "trained on base preset tiny \\(seed 1\\)"),
                            (dict(lora={**LORA, "rank": 2}), "LoRA settings"),
                            (dict(lora=None), "holds LoRA adapters")):
        with pytest.raises(PixmoError, match=message):
            train(TrainConfig.from_dict({**raw, **change}), resume=True)
    train(TrainConfig.from_dict(raw), resume=True)
    full, resumed = losses(single), losses(tmp_path / "cut")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in full:
        assert resumed[step]["loss"] == full[step]["loss"], step
    last = f"step_{STEPS:08d}"
    a = checkpoint_tensors(single / "checkpoints" / last, tmp_path / "a")
    b = checkpoint_tensors(tmp_path / "cut" / "checkpoints" / last, tmp_path / "b")
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process(setup, single, strategy):  # noqa: F811
    root, data, tok = setup
    run_dir = root / strategy
    cfg = lora_config(run_dir, data, tok, workers=1, parallel={"strategy": strategy})
    cfg["checkpoint"]["export"] = strategy == "fsdp"  # gathered from both ranks' shards
    launch(write_yaml(root / f"{strategy}.yaml", cfg), 2)
    one, two = losses(single), losses(run_dir)
    assert sorted(two) == list(range(1, STEPS + 1))
    for step in one:
        assert two[step]["tokens"] == one[step]["tokens"]
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], rel=1e-5)
    last = f"step_{STEPS:08d}"
    a = checkpoint_tensors(single / "checkpoints" / last, root / f"{strategy}-a")
    b = checkpoint_tensors(run_dir / "checkpoints" / last, root / f"{strategy}-b")
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    if strategy == "fsdp":  # the run's export (gathered from both ranks' shards) is the base
        # with the final adapters merged in, as one process exports the sharded checkpoint
        export_checkpoint(run_dir / "checkpoints" / last, root / "fsdp-export")
        exported = from_pretrained(run_dir / "model").state_dict()
        expected = from_pretrained(root / "fsdp-export").state_dict()
        assert exported.keys() == expected.keys()
        for name, tensor in expected.items():
            assert torch.equal(exported[name], tensor), name


def test_base_identity_hashes_weight_files(tmp_path):
    from molmo.model.weights import save_pretrained

    torch.manual_seed(0)
    model = Molmo(preset("tiny"))
    save_pretrained(model, tmp_path / "ckpt")
    section = ModelSection(checkpoint=str(tmp_path / "ckpt"))
    first = lora.base_identity(section, model, 0)
    assert first == lora.base_identity(section, model, 5)  # the files, not the seed
    with torch.no_grad():
        model.llm.norm.weight.add_(1)
    save_pretrained(model, tmp_path / "ckpt", overwrite=True)
    assert lora.base_identity(section, model, 0)["sha256"] != first["sha256"]


def test_activation_checkpointing_keeps_adapter_names_and_gradients():
    from tests.molmo.train.test_parallel import assert_checkpointing_keeps_names_and_gradients

    torch.manual_seed(0)
    model = lora.apply(Molmo(preset("tiny")), LoraConfig(rank=4, targets=LORA_TARGETS))
    for name in adapter_names(model):
        if ".lora_B." in name:  # B starts at zero: make every adapter count
            torch.nn.init.normal_(model.get_parameter(name), std=0.1)
    grads = assert_checkpointing_keeps_names_and_gradients(model)
    assert set(grads) == adapter_names(model)


def test_export_in_the_official_layout_reads_back_bit_exact(single, tmp_path):
    """molmo export --format official: the merged model under the hub's names, with the config,
    processor, generation and tokenizer files serving needs (molmo.model.serving)."""
    step_dir = single / "checkpoints" / f"step_{STEPS:08d}"
    assert main(["export", str(step_dir), str(tmp_path / "ours")]) == 0
    assert main(["export", str(step_dir), str(tmp_path / "hub"), "--format", "official"]) == 0
    ours, hub = from_pretrained(tmp_path / "ours"), from_pretrained(tmp_path / "hub")
    assert ours.state_dict().keys() == hub.state_dict().keys()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(hub.state_dict()[name], tensor), name
    ids = torch.arange(1, 40)[None]
    with torch.no_grad():
        assert torch.equal(hub(ids), ours(ids))
    files = {p.name for p in (tmp_path / "hub").iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json",
            "processor_config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= files
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["architectures"] == ["MolmoForCausalLM"] and config["model_type"] == "molmo"
    assert config["auto_map"]["AutoModelForCausalLM"].endswith(
        "--modeling_molmo.MolmoForCausalLM")
    assert ((tmp_path / "hub" / "tokenizer.json").read_bytes()
            == (tmp_path / "ours" / "tokenizer.json").read_bytes())
