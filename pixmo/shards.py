"""The old import path of the public shard reader, kept so users' code keeps working:
``pixmo.shards.iter_samples`` is ``pixmo.dataset.iter_samples``."""

from pixmo.dataset import ShardSample, iter_samples

__all__ = ["ShardSample", "iter_samples"]
