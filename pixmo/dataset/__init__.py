"""The output dataset: sample keys, WebDataset shards, tables, ``dataset.json``, verification.

The public reader is ``pixmo.dataset.iter_samples`` (``pixmo.shards.iter_samples`` is the
old name, kept as an alias).
"""

from pixmo.dataset.shards import ShardSample, iter_samples

__all__ = ["ShardSample", "iter_samples"]
