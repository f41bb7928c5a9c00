"""Shared fixtures: small real samples (PNG bytes and schema-valid JSON) and
one Ray session for the whole test run."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from pixmo.dataset.format import ShardSample
from pixmo.dataset.samples import sample_key


def make_sample(i: int, size: tuple[int, int] = (32, 24)) -> ShardSample:
    """A schema-valid sample whose image is a real PNG, distinct for each ``i``."""
    image = Image.new("RGB", size, (i % 256, (i // 256) % 256, 77))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    key = sample_key(digest)
    sample = {
        "schema_version": 1,
        "key": key,
        "image": {"sha256": digest, "width": size[0], "height": size[1], "format": "png",
                  "source": f"images/{i:05d}.png"},
        "transcripts": [],
        "captions": [{"text": f"A plain square of colour number {i}.", "method": "cleanup"}],
        "points": [{"label": "square", "points": [[50.0, 50.0]], "count": 1,
                    "collection_method": "pointing", "annotators": ["a1"]}],
        "qa": [],
        "sources": [{"file": "captions.jsonl", "record": str(i + 1)}],
    }
    return ShardSample(key=key, json=sample, files={"png": data})


@pytest.fixture
def samples() -> list[ShardSample]:
    return [make_sample(i) for i in range(23)]


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()
