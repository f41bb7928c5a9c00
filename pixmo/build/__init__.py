"""The build's stages, engine-free: raw annotations in, shards, manifest and rejects ledger out.

Engines import the package (``from pixmo import build``) and wire what it
names, in this order: ``stages`` (read, check, annotate, join, plan),
``images`` (resolve an image once, attach its bytes at write time),
``pixmo.dataset.cutting`` (``ShardPlan``) and ``output`` (prepare, write or
keep a shard, finish). ``parts`` are the types that travel between workers.
"""

from pixmo.build.config import BuildConfig
from pixmo.build.images import resolve_image
from pixmo.build.output import (
    Previous,
    finish,
    prepare_output,
    refuse_other_config,
    write_or_keep,
)
from pixmo.build.parts import ImagePart, Keyed, Packed, PlannedSample
from pixmo.build.stages import (
    Annotator,
    caption_writer,
    check_record,
    input_files,
    join_sample,
    join_samples,
    plan,
    read_raw,
)
from pixmo.dataset.cutting import ShardPlan

__all__ = ["Annotator", "BuildConfig", "ImagePart", "Keyed", "Packed", "PlannedSample",
           "Previous", "ShardPlan", "caption_writer", "check_record", "finish", "input_files",
           "join_sample", "join_samples", "plan", "prepare_output", "read_raw",
           "refuse_other_config", "resolve_image", "write_or_keep"]
