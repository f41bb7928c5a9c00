"""The ``pixmo`` command line.

Each command parses its flags, calls one library function and renders the
result; a ``PixmoError`` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from pixmo.errors import PixmoError

Command = Callable[[argparse.Namespace], int]


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if c.replace(",", "").replace(".", "").isdigit() else c.ljust(w)
            for c, w in zip(row, widths, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def cmd_inspect(args: argparse.Namespace) -> int:
    from pixmo.dataset import summarize

    summary = summarize(args.dir)
    out = [f"dataset {summary.name}: {summary.samples:,} samples in {len(summary.shards)} "
           f"shards, {_human_bytes(summary.bytes)}", ""]
    out.append(_table([(s.shard, f"{s.samples:,}", _human_bytes(s.bytes), s.first_key or "-",
                        s.last_key or "-") for s in summary.shards],
                      ("shard", "samples", "size", "first key", "last key")))
    out += ["", _table([(kind, f"{n:,}") for kind, n in summary.counts.items()],
                       ("annotations", "count"))]
    if summary.collection_methods:
        out += ["", _table([(m, f"{n:,}") for m, n in summary.collection_methods.items()],
                           ("point collection", "label sets"))]
    rejects = summary.rejects_by_reason
    out += ["", _table([(r, f"{n:,}") for r, n in rejects.items()], ("rejected", "records"))
            if rejects else "rejected: none"]
    if summary.example is not None:
        out += ["", f"first sample ({summary.example.get('key')}):",
                json.dumps(summary.example, indent=2, ensure_ascii=False)]
    print("\n".join(out))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pixmo.dataset import verify

    problems = verify(args.dir)
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(f"{args.dir}: ok")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from pixmo.dataset import IMAGE_EXTENSIONS, find_sample
    from pixmo.draw import render_points

    sample = find_sample(args.dir, args.key)
    image = next(data for ext, data in sample.files.items() if ext in IMAGE_EXTENSIONS)
    out = render_points(image, sample.json["points"], args.out)
    labels = len(sample.json["points"])
    print(f"wrote {out} ({labels} label set{'s' if labels != 1 else ''})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixmo", description="Build and check PixMo-style "
                                     "multimodal datasets.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="counts, shard sizes, annotation kinds, one sample")
    p.add_argument("dir", help="dataset directory")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("validate", help="check shards, sample JSON, manifest and dataset.json")
    p.add_argument("dir", help="dataset directory")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("show", help="draw one sample's image with its points")
    p.add_argument("dir", help="dataset directory")
    p.add_argument("--key", required=True, help="sample key")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(run=cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    run: Command = args.run
    try:
        return run(args)
    except PixmoError as exc:
        print(f"pixmo {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
