"""The ``pixmo collect`` command: its flags, and serving the annotation app on them.

A part of the ``pixmo`` command line (``pipelines/cli.py`` adds it), in its own module
because it is the one command that runs a server. It prints what it found (repaired logs,
images it will not offer), then ``serving URL`` once the socket accepts connections, so a
script can wait for that line instead of polling.
"""

from __future__ import annotations

import argparse
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pixmo.errors import ConfigError

if TYPE_CHECKING:
    from pixmo.command_line import Subcommands

OPTIONS = {"CollectConfig.speakers_per_image": "--speakers-per-image",
           "CollectConfig.min_speech_s": "--min-speech-s",
           "CollectConfig.lease_s": "--lease-s"}


def cmd_collect(args: argparse.Namespace) -> int:
    from pixmo.collect.app import create_app, serve
    from pixmo.collect.collector import Collector
    from pixmo.collect.config import CollectConfig, load_annotators, load_labels

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"must be 0-65535, got {args.port}", field="--port")
    tokens = (load_annotators(args.annotators) if args.annotators
              else {secrets.token_urlsafe(24): "a1"})
    cfg = CollectConfig(labels=load_labels(args.labels) if args.labels else (),
                        speakers_per_image=args.speakers_per_image,
                        min_speech_s=args.min_speech_s, lease_s=args.lease_s)
    collector = Collector(Path(args.raw), cfg, clock=time.monotonic)
    for line in [r.line() for r in collector.repairs] + collector.skipped:
        print(line, flush=True)
    print(f"{len(collector.images)} images, {len(collector.board.tasks)} tasks", flush=True)

    def ready(url: str) -> None:
        print(f"serving {url}", flush=True)
        if not args.annotators:
            print(f"login link for annotator a1: {url}#token={next(iter(tokens))}", flush=True)

    try:
        serve(create_app(collector, tokens), args.host, args.port, ready)
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again
        pass
    finally:
        collector.close()
    print("stopped", flush=True)
    return 0


def add_collect(sub: Subcommands) -> None:
    p = sub.add_parser("collect", help="the annotation web app: spoken descriptions and "
                       "clicks over DIR/images, written into DIR as pixmo build --raw reads it")
    p.add_argument("--raw", required=True, help="raw directory with images/")
    p.add_argument("--annotators", default=None, help="JSON {token: annotator id} (default: "
                   "one annotator a1 with a new token, printed as a login link)")
    p.add_argument("--labels", default=None, help="labels to point at, one a line or a JSON "
                   "list (default: the annotator names one)")
    p.add_argument("--speakers-per-image", type=int, default=1,
                   help="caption sessions per image, each by another annotator")
    p.add_argument("--min-speech-s", type=float, default=60.0,
                   help="shortest recording accepted (PixMo: 60)")
    p.add_argument("--lease-s", type=float, default=900.0,
                   help="seconds before an unfinished task goes to someone else")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="0: any free port")
    p.set_defaults(handler=cmd_collect, options=OPTIONS)
