"""molmo/data/config.py: the data section of a training YAML, read and checked."""

from __future__ import annotations

import pytest

from molmo.data.config import DataConfig, DatasetConfig
from molmo.data.tasks import TaskConfig
from pixmo.errors import ConfigError


def test_config_from_dict():
    cfg = DataConfig.from_dict({
        "batch_size": 8, "mode": "resampled",
        "datasets": [{"name": "cap", "source": ["a/shards/x-000000.tar"], "size": 50000,
                      "tasks": {"tasks": ["long_caption", "transcript"],
                                "caption_prompt": "length_hint"}},
                     {"name": "points", "source": "b"}],
    })
    assert cfg.datasets[0].source == ("a/shards/x-000000.tar",)
    assert cfg.datasets[0].tasks == TaskConfig(tasks=("long_caption", "transcript"),
                                               caption_prompt="length_hint")
    assert cfg.datasets[1].tasks == TaskConfig()
    with pytest.raises(ValueError, match=r"data.datasets\[0\].tasks: unknown keys \['style'\]"):
        DataConfig.from_dict({"datasets": [{"name": "a", "source": "a",
                                            "tasks": {"style": "x"}}]})
    assert cfg.pixel_dtype == "uint8"
    with pytest.raises(ValueError, match="pixel_dtype must be one of"):
        DataConfig.from_dict({"pixel_dtype": "bf16", "datasets": [{"name": "a", "source": "a"}]})
    assert cfg.worker_type == "process"
    with pytest.raises(ValueError, match="worker_type must be one of"):
        DataConfig.from_dict({"worker_type": "fiber", "datasets": [{"name": "a", "source": "a"}]})
    with pytest.raises(ValueError, match="worker_timeout_s must be >= 0"):
        DataConfig.from_dict({"worker_timeout_s": -1,
                              "datasets": [{"name": "a", "source": "a"}]})
    with pytest.raises(ValueError, match="rates need mode 'resampled'"):
        DataConfig.from_dict({"mode": "finite",
                              "datasets": [{"name": "a", "source": "a", "rate": 1.0}]})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 0}, "DataConfig.batch_size must be >= 1, got 0"),
    ({"num_workers": -1}, "DataConfig.num_workers must be >= 0, got -1"),
    ({"max_crops": 0}, "DataConfig.max_crops must be >= 1, got 0"),
    ({"worker_timeout_s": float("nan")}, "DataConfig.worker_timeout_s must be >= 0, got nan"),
    ({"mode": "epochs"}, "DataConfig.mode must be one of ('finite', 'resampled'), got 'epochs'"),
])
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(ConfigError) as info:
        DataConfig(datasets=(DatasetConfig("a", "a"),), **kwargs)
    assert str(info.value) == message


def test_datasets_are_named_once_with_valid_rates():
    with pytest.raises(ConfigError, match="DataConfig.datasets must name at least one"):
        DataConfig(datasets=())
    with pytest.raises(ConfigError, match=r"names must be unique, got \['a', 'a'\]"):
        DataConfig(datasets=(DatasetConfig("a", "x"), DatasetConfig("a", "y")))
    with pytest.raises(ConfigError, match="DatasetConfig.rate must be >= 0, got -1"):
        DatasetConfig("a", "x", rate=-1.0)
    with pytest.raises(ConfigError, match="DatasetConfig.size must be >= 1, got 0"):
        DatasetConfig("a", "x", size=0)
    with pytest.raises(ValueError, match=r"^data.datasets\[1\].rate must be >= 0, got -2$"):
        DataConfig.from_dict({"datasets": [{"name": "a", "source": "a"},
                                           {"name": "b", "source": "b", "rate": -2}]})


def test_one_slot_per_worker_or_one_without_workers():
    one = (DatasetConfig("a", "a"),)
    assert DataConfig(datasets=one, num_workers=3).slots_per_rank == 3
    assert DataConfig(datasets=one, num_workers=0).slots_per_rank == 1
