"""Caption throughput: many images' transcripts to captions, against one at a time.

Two ratios, each against a baseline run in the same invocation on the same input:
1. an OpenAI-compatible endpoint (a real server on 127.0.0.1 that answers every request
   after ``--latency`` seconds, as a remote model would): ``--concurrency`` requests in
   flight against one after another;
2. a local causal LM in this process (``hf:DIR``; the tests' tiny random Qwen2, made
   here): prompts generated in batches of ``--batch`` against one prompt per ``generate``.
   The replies must be the same both ways.

No cache: every caption is asked for. Run:
``.venv/bin/python benchmarks/captions.py [--images 48] [--latency 0.2]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixmo.captions import CaptionConfig, CaptionLLMConfig, CaptionWriter  # noqa: E402
from tests.http_server import LocalServer, Reply  # noqa: E402
from tests.pixmo.test_llm import WORDS, make_tiny_lm  # noqa: E402

REPLY = json.dumps({"choices": [{"index": 0, "message": {
    "role": "assistant", "content": "A red car parked on a quiet road."}}]}).encode()


def images(n: int) -> list[list[dict[str, str]]]:
    """One or two transcripts per image (the clean and the merge prompt), all different."""
    def text(i: int) -> str:
        return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12 + i % 9))
    return [[{"text": text(i)}] if i % 2 else [{"text": text(i)}, {"text": text(i + n)}]
            for i in range(n)]


def timed(writer: CaptionWriter, batch: list[list[dict[str, str]]]) -> tuple[float, list]:
    start = time.perf_counter()
    captions = writer.many(batch)
    return time.perf_counter() - start, [getattr(c, "text", None) for c in captions]


def endpoint(args: argparse.Namespace) -> tuple[float, float]:
    with LocalServer() as server:
        url = server.route("/v1/chat/completions", Reply(body=REPLY, latency_s=args.latency))
        llm = CaptionLLMConfig(base_url=url.removesuffix("/chat/completions"), model="stub",
                               retries=0, timeout_s=30)
        seconds = []
        for concurrency in (1, args.concurrency):
            writer = CaptionWriter(CaptionConfig(method="llm", llm=llm, concurrency=concurrency))
            took, texts = timed(writer, images(args.images))
            assert all(texts), "every request answered"
            seconds.append(took)
    return seconds[0], seconds[1]


def local(args: argparse.Namespace) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_lm(Path(tmp) / "tiny-qwen")
        llm = CaptionLLMConfig(base_url=f"hf:{model}", max_tokens=args.max_tokens, device="cpu")
        seconds, replies = [], []
        for batch in (1, args.batch):
            writer = CaptionWriter(CaptionConfig(method="llm", llm=llm, concurrency=batch))
            timed(writer, images(2))  # warm-up: first-call costs out of the measurement
            took, texts = timed(writer, images(args.images))
            seconds.append(took)
            replies.append(texts)
        assert replies[0] == replies[1], "batched replies differ from one at a time"
    return seconds[0], seconds[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    one, many = endpoint(args)
    print(f"endpoint, {args.images} images, {args.latency * 1000:.0f} ms per answer: "
          f"one at a time {one:.2f} s, {args.concurrency} in flight {many:.2f} s "
          f"-> {one / many:.1f}x")
    one, many = local(args)
    print(f"local tiny LM, {args.images} images, {args.max_tokens} new tokens: one prompt per "
          f"generate {one:.2f} s, batches of {args.batch} {many:.2f} s -> {one / many:.1f}x "
          "(same replies)")


if __name__ == "__main__":
    main()
