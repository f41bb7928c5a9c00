"""Tests of pixmo.shards: the old import path still reads a dataset."""

from __future__ import annotations

import pixmo.dataset
import pixmo.shards
from pixmo.dataset.writer import ShardConfig, write_dataset


def test_old_name_is_the_public_reader():
    assert pixmo.shards.iter_samples is pixmo.dataset.iter_samples
    assert pixmo.shards.ShardSample is pixmo.dataset.ShardSample


def test_old_name_reads_a_dataset(tmp_path, samples):
    write_dataset(tmp_path, samples[:5], name="old", config=ShardConfig(max_samples=2))
    read = list(pixmo.shards.iter_samples(tmp_path))
    assert [(s.key, s.json, s.files) for s in read] == [(s.key, s.json, s.files)
                                                        for s in samples[:5]]
