"""The output dataset: its format, shard writer and reader, tables, sample keys, verification.

Rooms: ``format`` (file names, the sample, shard stats, key rules), ``writer`` (tars and
whole datasets), ``reader`` (shard URLs and samples), ``tables`` (manifest, rejects,
``dataset.json``), ``samples`` (key scheme and sample builder), ``verify`` (what
``pixmo validate`` runs). The public reader is ``pixmo.dataset.iter_samples``
(``pixmo.shards.iter_samples`` is the old name, kept as an alias).
"""

from pixmo.dataset.format import ShardSample
from pixmo.dataset.reader import iter_samples

__all__ = ["ShardSample", "iter_samples"]
