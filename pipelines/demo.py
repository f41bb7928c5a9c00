"""``make demo``: the largest end-to-end path that exists today.

It draws small scenes with known objects, turns each into a sample (the
image's original PNG bytes, a caption, the objects' centres as points),
writes them as shards with a manifest and dataset.json, then validates and
inspects the result, exactly as a user would with ``pixmo validate`` and
``pixmo inspect``. The demo grows as the collection stages land.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from pipelines.cli import main as pixmo_main
from pixmo.shards import ShardConfig, ShardSample, write_dataset

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 205, 40)}
SHAPES = ("circle", "square")


def scene(index: int, rng: random.Random) -> ShardSample:
    """One image with 1-6 objects; their centres become pointing annotations."""
    width, height = rng.choice([(320, 240), (400, 300), (256, 256)])
    image = Image.new("RGB", (width, height), tuple(rng.randrange(200, 256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    objects: dict[str, list[list[float]]] = {}
    for _ in range(rng.randint(1, 6)):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        r = rng.randint(12, 28)
        cx, cy = rng.randint(r, width - r), rng.randint(r, height - r)
        box = (cx - r, cy - r, cx + r, cy + r)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        objects.setdefault(f"{colour} {shape}", []).append(
            [round(100 * cx / width, 2), round(100 * cy / height, 2)])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    parts = [f"{len(pts)} {label}{'s' if len(pts) > 1 else ''}" for label, pts in objects.items()]
    caption = f"A plain background with {', '.join(parts)}."
    sample = {
        "schema_version": 1,
        "key": digest[:20],
        "image": {"sha256": digest, "width": width, "height": height, "format": "png",
                  "source": f"demo/scene-{index:04d}.png"},
        "transcripts": [],
        "captions": [{"text": caption, "method": "cleanup"}],
        "points": [{"label": label, "points": sorted(pts), "count": len(pts),
                    "collection_method": "counting" if len(pts) > 2 else "pointing",
                    "annotators": ["demo"]} for label, pts in sorted(objects.items())],
        "qa": [],
        "sources": [{"file": "demo", "record": str(index)}],
    }
    return ShardSample(key=digest[:20], json=sample, files={"png": data})


def scenes(n: int, seed: int) -> Iterator[ShardSample]:
    rng = random.Random(seed)
    for i in range(n):
        yield scene(i, rng)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo")
    parser.add_argument("--out", default="demo-output")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out) / "dataset"
    if out.exists():
        shutil.rmtree(out)
    description = write_dataset(out, scenes(args.scenes, args.seed), name="demo",
                                config=ShardConfig(max_samples=64))
    print(f"wrote {description['counts']['samples']} samples in "
          f"{description['counts']['shards']} shards to {out}\n")
    if pixmo_main(["validate", str(out)]) != 0:
        return 1
    print()
    pixmo_main(["inspect", str(out)])
    print(f"\nDone. Look at {out}/ (shards/, manifest.parquet, dataset.json); "
          f"`tar -tf {out}/shards/pixmo-000000.tar | head` lists a shard.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
