"""Does schema validation dominate a build? Times checking N sample records
(compiled fastjsonschema, as the toolkit does; jsonschema with a cached
validator; jsonschema compiling the schema per call) against writing the same
N samples into shards without validation, all in this one process.

    python benchmarks/validation.py [--n 10000]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import platform
import tempfile
import time

import jsonschema
from PIL import Image

from pixmo.dataset.format import ShardSample
from pixmo.dataset.samples import sample_key
from pixmo.dataset.writer import ShardConfig, write_dataset
from pixmo.schema import check, load_schema


def sample(i: int) -> ShardSample:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (i % 256, (i // 256) % 256, 9)).save(buf, format="PNG")
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    transcript = {"text": "a red circle on the left and two blue squares " * 8,
                  "annotator": "a1", "session_id": f"s{i}", "audio_sha256": digest,
                  "duration_s": 64.2, "language": "en", "avg_logprob": -0.3,
                  "model": "tiny.en", "backend": "faster-whisper", "beam_size": 5,
                  "segments": [{"start": float(k), "end": k + 0.9, "text": "words"}
                               for k in range(12)]}
    obj = {"schema_version": 1, "key": sample_key(digest),
           "image": {"sha256": digest, "width": 64, "height": 48, "format": "png",
                     "source": f"images/{i}.png"},
           "transcripts": [transcript] * 3,
           "captions": [{"text": "A dense caption. " * 20, "method": "cleanup"}],
           "points": [{"label": f"thing {k}", "points": [[1.5 * j, 2.0 * j] for j in range(8)],
                       "count": 8, "collection_method": "pointing", "annotators": ["a1", "a2"]}
                      for k in range(4)],
           "qa": [{"question": "What is it?", "answer": "A thing."}],
           "sources": [{"file": "captions.jsonl", "record": str(i)}]}
    return ShardSample(sample_key(digest), obj, {"png": data})


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    samples = [sample(i) for i in range(args.n)]
    records = [s.json for s in samples]
    schema = load_schema("sample")
    check("sample", records[0])  # compile once, as a build does at start-up

    ours = timed(lambda: [check("sample", r) for r in records])
    cached = jsonschema.Draft202012Validator(schema)
    reference = timed(lambda: [cached.is_valid(r) for r in records])
    n_uncached = max(1, args.n // 20)
    uncached = timed(lambda: [jsonschema.validate(r, schema) for r in records[:n_uncached]])
    uncached *= args.n / n_uncached
    with tempfile.TemporaryDirectory() as out:
        build = timed(lambda: write_dataset(
            out, samples, name="bench",
            config=ShardConfig(max_samples=1000, validate_samples=False)))

    print(f"machine: {platform.machine()} {platform.processor() or ''} python "
          f"{platform.python_version()}")
    print(f"{args.n} sample records (3 transcripts, 4 point sets each)")
    print(f"  write shards, no validation   {build:8.3f} s  (baseline)")
    print(f"  fastjsonschema (ours)         {ours:8.3f} s  = {ours / build:6.1%} of the build")
    print(f"  jsonschema, cached validator  {reference:8.3f} s  = {reference / build:6.1%}")
    print(f"  jsonschema.validate per call  {uncached:8.3f} s  = {uncached / build:6.1%} "
          f"(extrapolated from {n_uncached})")
    print(f"  speed-up of ours over cached jsonschema: {reference / ours:.1f}x")


if __name__ == "__main__":
    main()
