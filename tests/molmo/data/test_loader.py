"""molmo/data/loader.py: the streaming loader, with real shards, a real BPE tokenizer, the Molmo
preprocessor, real DataLoader worker processes and worker threads."""

from __future__ import annotations

import hashlib
import io
import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from molmo.data.config import DataConfig, DatasetConfig
from molmo.data.loader import MolmoLoader
from molmo.data.tasks import CAPTION_TEMPLATES
from molmo.preprocess.batching import normalize_images
from molmo.preprocess.config import PreprocessConfig
from molmo.preprocess.tokenizer import train_bpe_tokenizer
from pixmo.dataset.format import ShardSample
from pixmo.dataset.samples import sample_key
from pixmo.dataset.writer import ShardConfig, write_dataset
from pixmo.errors import PixmoError
from pixmo.points.prompts import POINT_COUNT_TEMPLATES, POINTING_TEMPLATES
from tests.conftest import make_sample
from tests.molmo.data.test_order import make_dataset

# Small crops keep preprocessing fast; the layout logic is the same as at 336 px.
PRE = PreprocessConfig(crop_size=112, overlap_margins=(2, 2), max_crops=2,
                       conversation_weighting="root_subsegments")


def make_tokenizer(directory):
    """A small BPE tokenizer trained on the prompts and captions the loader tests produce."""
    texts = [*CAPTION_TEMPLATES, *POINTING_TEMPLATES, *POINT_COUNT_TEMPLATES,
             *(make_sample(i).json["captions"][0]["text"] for i in range(50)),
             '<point x="50.0" y="50.0" alt="square">square</point> Counting the shows a total']
    return train_bpe_tokenizer(texts * 3, directory / "bpe", vocab_size=400)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """37 samples in 3 shards: fewer shards than the 4 slots of 2 ranks x 2 workers."""
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", 37, 15)


def noisy_sample(i: int, size: tuple[int, int] = (150, 100)) -> ShardSample:
    """``make_sample(i)`` with a random-noise PNG: resized, its pixels fall between the uint8
    levels, so uint8 crops really round (a plain colour stays exact)."""
    obj = make_sample(i, size).json
    pixels = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    obj["key"], obj["image"]["sha256"] = sample_key(digest), digest
    return ShardSample(key=obj["key"], json=obj, files={"png": data})


def config(*datasets: DatasetConfig, **kw) -> DataConfig:
    kw = {"batch_size": 2, "num_workers": 2, "shuffle_block": 4, "max_sequence_length": 512,
          **kw}
    return DataConfig(datasets=datasets, **kw)


def run(loader: MolmoLoader, n: int | None = None) -> list[tuple[dict, object, dict]]:
    """(batch, info, state_dict after it) for ``n`` batches (or the whole epoch)."""
    out = []
    for batch, info in loader.iter_with_info():
        out.append((batch, info, loader.state_dict()))
        if n is not None and len(out) == n:
            break
    return out


def same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (x, xi, _), (y, yi, _) in zip(a, b, strict=True):
        assert xi.keys == yi.keys and xi.slot == yi.slot
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_finite_epoch_covered_once_by_two_ranks_of_two_workers(tokenizer, dataset, worker_type):
    all_keys = {make_sample(i).key for i in range(37)}
    cfg = config(DatasetConfig("ds", str(dataset)), mode="finite", seed=11,
                 worker_type=worker_type)
    seen: list[str] = []
    counts = []
    for rank in range(2):
        loader = MolmoLoader(cfg, tokenizer, PRE, rank=rank, world_size=2)
        batches = run(loader)
        counts.append(len(batches))
        assert {info.slot for _, info, _ in batches} == {2 * rank, 2 * rank + 1}
        for batch, info, _ in batches:
            for row, (key, padding) in enumerate(zip(info.keys, info.padding, strict=True)):
                loss = batch["loss_masks"][row]
                if padding:  # a repeat that fills the batch: no loss at all
                    assert loss.sum() == 0 and (batch["labels"][row] == -100).all()
                else:
                    assert loss.sum() > 0
                    seen.append(key)
        assert loader.epoch == 1
        stats = loader.stats()
        assert stats["examples"] == len(batches) * 2
        assert stats["failed_samples"] == 0
    # 4 slots x 10 positions (37 padded to whole batches of 2): 10 batches per rank.
    assert counts == [10, 10] == [loader.batches_per_epoch] * 2
    assert len(seen) == len(set(seen)) == 37
    assert set(seen) == all_keys


def test_next_epoch_reshuffles(tokenizer, dataset):
    cfg = config(DatasetConfig("ds", str(dataset)), mode="finite", num_workers=0)
    loader = MolmoLoader(cfg, tokenizer, PRE)
    first = [k for _, info, _ in run(loader) for k, p in zip(info.keys, info.padding,
                                                              strict=True) if not p]
    second = [k for _, info, _ in run(loader) for k, p in zip(info.keys, info.padding,
                                                               strict=True) if not p]
    assert loader.epoch == 2
    assert sorted(first) == sorted(second) and first != second


@pytest.mark.parametrize(("workers", "worker_type"), [(0, "process"), (2, "process"),
                                                    (2, "thread")])
def test_finite_resume_equals_uninterrupted(tokenizer, dataset, workers, worker_type):
    cfg = config(DatasetConfig("ds", str(dataset)), mode="finite", num_workers=workers,
                 worker_type=worker_type)
    loader = MolmoLoader(cfg, tokenizer, PRE, rank=1, world_size=2)
    epoch0 = run(loader)
    epoch1 = run(loader, 3)
    full = epoch0 + epoch1
    n0 = len(epoch0)
    for k in (1, 4, 7, n0):  # after odd and even batches, and at the epoch's end
        resumed = MolmoLoader(cfg, tokenizer, PRE, rank=1, world_size=2)
        resumed.load_state_dict(full[k - 1][2])
        if k < n0:  # the rest of epoch 0, then epoch 1
            same_batches(run(resumed), full[k:n0])
        same_batches(run(resumed, 3), epoch1)
        assert resumed.state_dict() == full[-1][2]
        assert json.loads(json.dumps(full[-1][2])) == full[-1][2]  # plain JSON values


def test_resampled_mixture_resume_equals_uninterrupted(tokenizer, dataset, tmp_path):
    small = make_dataset(tmp_path / "small", 7, 3, first=100)
    cfg = config(DatasetConfig("ds", str(dataset)), DatasetConfig("small", str(small)),
                 shuffle_block=3, seed=5)
    full = run(MolmoLoader(cfg, tokenizer, PRE, rank=0, world_size=2), 14)
    assert {d for _, info, _ in full for d in info.datasets} == {"ds", "small"}
    for k in (3, 8):
        resumed = MolmoLoader(cfg, tokenizer, PRE, rank=0, world_size=2)
        resumed.load_state_dict(full[k - 1][2])
        same_batches(run(resumed, 14 - k), full[k:])


def test_thread_workers_give_the_process_workers_batches(tokenizer, dataset, tmp_path):
    """Same batches in the same order; a state saved with one type resumes with the other."""
    small = make_dataset(tmp_path / "small", 7, 3, first=100)
    sources = (DatasetConfig("ds", str(dataset)), DatasetConfig("small", str(small)))
    for mode, n in (("finite", None), ("resampled", 9)):
        cfg = {kind: config(*sources[: 1 if mode == "finite" else 2], mode=mode, seed=3,
                            worker_type=kind, pin_memory=True)  # no-op without a GPU
               for kind in ("process", "thread")}
        processes = run(MolmoLoader(cfg["process"], tokenizer, PRE, rank=1, world_size=2), n)
        threads = run(MolmoLoader(cfg["thread"], tokenizer, PRE, rank=1, world_size=2), n)
        same_batches(threads, processes)
        assert [s for *_, s in threads] == [s for *_, s in processes]
        resumed = MolmoLoader(cfg["thread"], tokenizer, PRE, rank=1, world_size=2)
        resumed.load_state_dict(processes[2][2])
        same_batches(run(resumed, len(processes) - 3), processes[3:])
    assert not [t for t in threading.enumerate() if t.name.startswith("molmo-data-worker")]


def test_changed_world_size_or_workers_refused(tokenizer, dataset):
    cfg = config(DatasetConfig("ds", str(dataset)))
    state = MolmoLoader(cfg, tokenizer, PRE, rank=0, world_size=2).state_dict()
    with pytest.raises(PixmoError, match=r"saved with world_size=2 and num_workers=2, this run "
                                         r"has world_size=4 and num_workers=2"):
        MolmoLoader(cfg, tokenizer, PRE, rank=0, world_size=4).load_state_dict(state)
    fewer = config(DatasetConfig("ds", str(dataset)), num_workers=1)
    with pytest.raises(PixmoError, match="num_workers=1"):
        MolmoLoader(fewer, tokenizer, PRE, rank=0, world_size=2).load_state_dict(state)
    other_seed = config(DatasetConfig("ds", str(dataset)), seed=1)
    with pytest.raises(PixmoError, match="seed=0, this run has 1"):
        MolmoLoader(other_seed, tokenizer, PRE, rank=0, world_size=2).load_state_dict(state)


def test_mixture_rates_follow_sqrt_sizes(tokenizer, tmp_path):
    sizes = {"a": 4, "b": 16, "c": 64}
    datasets = []
    first = 0
    for name, n in sizes.items():
        datasets.append(DatasetConfig(name, str(make_dataset(tmp_path / name, n, 16, first))))
        first += n
    cfg = config(*datasets, batch_size=8, num_workers=0,
                 max_sequence_length=256)
    loader = MolmoLoader(cfg, tokenizer, PRE)
    rates = np.asarray([1, 2, 4]) / 7
    assert np.allclose(loader.rates, rates)
    names = [d for _, info, _ in run(loader, 40) for d in info.datasets]
    n = len(names)
    counts = np.asarray([names.count(k) for k in sizes])
    sigma = np.sqrt(n * rates * (1 - rates))
    assert np.all(np.abs(counts - n * rates) < 4 * sigma), (counts, n * rates)
    explicit = config(*(DatasetConfig(d.name, d.source, rate=r) for d, r in
                        zip(datasets, (1.0, 0.0, 1.0), strict=True)), num_workers=0)
    names = {d for _, info, _ in run(MolmoLoader(explicit, tokenizer, PRE), 10)
             for d in info.datasets}
    assert names == {"a", "c"}


def test_uint8_transport_gives_the_float32_batches(tokenizer, tmp_path):
    """Two real workers shipping uint8 crops: after normalize_images, the float32 mode's
    batches, up to the uint8 rounding (<= 0.5/255 in [0, 1] pixel units)."""
    write_dataset(tmp_path / "ds", [noisy_sample(i) for i in range(9)], name="ds",
                  config=ShardConfig(max_samples=4))
    source = DatasetConfig("ds", str(tmp_path / "ds"))
    floats = run(MolmoLoader(config(source, mode="finite", pixel_dtype="float32"), tokenizer,
                             PRE))
    uint8s = run(MolmoLoader(config(source, mode="finite"), tokenizer, PRE))
    assert len(floats) == 6  # 9 samples, 2 workers, batch 2: the epoch padded to 12
    std = torch.tensor(PRE.image_std).repeat(PRE.patch_dim // 3)
    errors = []
    for (f, fi, _), (u, ui, _) in zip(floats, uint8s, strict=True):
        assert fi.keys == ui.keys and u["images"].dtype == torch.uint8
        got = normalize_images(u, PRE)
        assert got.keys() == f.keys()
        for key in f.keys() - {"images"}:
            assert torch.equal(got[key], f[key]), key
        absent = (f["images"] == -1).flatten(2).all(2)
        assert torch.equal(absent, ~u["crop_mask"])
        assert (got["images"][absent] == -1).all()
        errors.append(((got["images"] - f["images"])[~absent] * std).abs().max().item())
    assert 0.4 / 255 < max(errors) <= 0.5 / 255 + 1e-6


def test_rank_and_world_size_default_to_torch_distributed(tokenizer, dataset, tmp_path):
    import subprocess
    import sys

    import torch.distributed as dist

    assert (MolmoLoader(config(DatasetConfig("ds", str(dataset))), tokenizer, PRE).world_size
            == 1)
    store = f"file://{tmp_path / 'store'}"
    peer = subprocess.Popen([sys.executable, "-c", (
        "import torch.distributed as dist\n"
        f"dist.init_process_group('gloo', init_method={store!r}, rank=1, world_size=2)\n"
        "dist.barrier()\ndist.destroy_process_group()\n")])
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=2)
    try:
        loader = MolmoLoader(config(DatasetConfig("ds", str(dataset))), tokenizer, PRE)
        assert (loader.rank, loader.world_size) == (0, 2)
        dist.barrier()
    finally:
        dist.destroy_process_group()
        assert peer.wait(timeout=60) == 0
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, world_size 2\)"):
        MolmoLoader(config(DatasetConfig("ds", str(dataset))), tokenizer, PRE, rank=2,
                    world_size=2)
