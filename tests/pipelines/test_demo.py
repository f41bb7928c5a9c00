"""The demo's own pieces (the whole chain runs in `make demo`, about 10 minutes)."""

from __future__ import annotations

from molmo.model.config import preset
from molmo.model.molmo import Molmo
from molmo.train.config import TrainConfig
from pipelines.demo import TOKENIZER_VOCAB, tokenizer_texts, train_config
from pixmo.dataset.writer import ShardConfig, write_dataset
from tests.conftest import make_sample


def test_demo_training_config_loads_and_fits_the_tokenizer(tmp_path):
    cfg = TrainConfig.from_dict(train_config(tmp_path, steps=40))
    assert cfg.steps == 40 and cfg.model.preset == "demo"
    assert cfg.parallel.strategy == "ddp" and cfg.data.max_crops == 1
    model_cfg = preset("demo")
    assert model_cfg.vision.image_size == cfg.preprocess.crop_size == 112
    # the image path learns slower than the LLM, or its content collapses (pipelines/demo.py)
    assert cfg.optim.vit.lr < cfg.optim.llm.lr and cfg.optim.connector.lr < cfg.optim.llm.lr
    assert model_cfg.llm.vocab_size == TOKENIZER_VOCAB
    params = sum(p.numel() for p in Molmo(model_cfg).parameters())
    assert 1_000_000 < params < 3_000_000  # small enough to train on 2 CPU cores in minutes


def test_tokenizer_texts_cover_captions_prompts_and_point_answers(tmp_path):
    write_dataset(tmp_path, [make_sample(i) for i in range(3)], name="t",
                  config=ShardConfig(max_samples=10))
    texts = tokenizer_texts(tmp_path)
    assert sum("A plain square of colour number" in t for t in texts) == 3
    assert sum(t.startswith("Counting the <point") for t in texts) == 3
    assert len(texts) == 3 * 4  # a caption, a point answer and two prompts per sample
