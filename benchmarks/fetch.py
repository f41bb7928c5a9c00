"""Download and import throughput against a local HTTP server with emulated latency.

Two ratios, each against a baseline run in the same invocation:
1. ``fetch_many`` (thread pool, per-host bound) against one ``fetch_bytes`` after
   another, for URLs whose server answers after ``--latency`` seconds;
2. a second ``import_release`` of the same pixmo-points file (images from the
   cache) against the first (every image downloaded).

Run: ``.venv/bin/python benchmarks/fetch.py [--images 64] [--latency 0.05]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from pixmo.fetch import FetchConfig, fetch_bytes, fetch_many  # noqa: E402
from pixmo.release.importer import ImportConfig, import_release  # noqa: E402
from tests.http_server import LocalServer, Reply  # noqa: E402


def jpeg(i: int) -> bytes:
    image = Image.effect_noise((256, 192), 40 + i % 50).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    images = [jpeg(i) for i in range(args.images)]
    config = FetchConfig(timeout_s=10, per_host_concurrency=args.workers)
    with LocalServer() as server, tempfile.TemporaryDirectory() as tmp:
        urls = [server.route(f"/{i}.jpg", Reply(body=data, latency_s=args.latency))
                for i, data in enumerate(images)]
        start = time.perf_counter()
        for url in urls:
            fetch_bytes(url, config)
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        results = dict(fetch_many(urls, config, workers=args.workers))
        pooled = time.perf_counter() - start
        if any(results[u] != d for u, d in zip(urls, images, strict=True)):
            raise SystemExit("fetch_many returned wrong bytes")

        rows = [{"image_url": url, "image_sha256": hashlib.sha256(data).hexdigest(),
                 "points": [{"x": 50.0, "y": 50.0}], "count": 1, "label": "noise",
                 "collection_method": "pointing"} for url, data in zip(urls, images, strict=True)]
        parquet = Path(tmp) / "points.parquet"
        pq.write_table(pa.Table.from_pylist(rows), parquet)
        cfg = ImportConfig(fetch=config, workers=args.workers)
        start = time.perf_counter()
        first = import_release("pixmo-points", [parquet], Path(tmp) / "out", config=cfg)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        second = import_release("pixmo-points", [parquet], Path(tmp) / "out", config=cfg)
        warm = time.perf_counter() - start
        if not first.samples == second.samples == second.images_cached == args.images:
            raise SystemExit(f"unexpected import reports: {first} {second}")

    mb = sum(map(len, images)) / 1e6
    print(f"{args.images} images ({mb:.1f} MB), server latency {args.latency * 1000:.0f} ms")
    print(f"sequential fetch_bytes: {sequential:.2f} s ({args.images / sequential:.1f} img/s)")
    print(f"fetch_many, {args.workers} workers: {pooled:.2f} s ({args.images / pooled:.1f} img/s)"
          f"  -> {sequential / pooled:.1f}x")
    print(f"import_release, cold: {cold:.2f} s; rerun from cache: {warm:.2f} s"
          f"  -> {cold / warm:.1f}x")


if __name__ == "__main__":
    main()
