"""What the ``pixmo`` and ``molmo`` command lines share: a parser whose usage errors are one
line, and a runner that turns every user error into one line on stderr and exit status 2.

It lives in the library because both programs use it and neither may import the other
(``molmo`` does not depend on ``pipelines``). A user error is a ``PixmoError`` (a
``ConfigError`` renamed to the option that gave its value) or an ``OSError`` (a path the
user gave that could not be read or written).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from pixmo.errors import PixmoError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors read like every other user error: one line on stderr
    (``pixmo build: argument --engine: invalid choice: 'x' ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


if TYPE_CHECKING:  # argparse's type of ``add_subparsers()``, generic only to type checkers
    Subcommands = argparse._SubParsersAction[ArgumentParser]


def command_parser(prog: str, description: str) -> tuple[ArgumentParser, Subcommands]:
    """A program's parser with ``-v/--verbose`` and its required subcommands, to which each
    command adds its own parser. A command sets ``handler`` and may set ``options``: its
    config fields (``Class.field``) by the option that fills them."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(options={})
    return parser, parser.add_subparsers(dest="command", required=True)


def run_command(program: str, args: argparse.Namespace, command: Callable[[], int],
                quiet: Sequence[str] = ()) -> int:
    """Log at INFO (DEBUG with ``-v``; the loggers in ``quiet`` at WARNING unless ``-v``),
    run ``command`` and return its status, or print a user error as one line and return 2."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for noisy in quiet:
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return command()
    except (PixmoError, OSError) as exc:
        error = exc if isinstance(exc, PixmoError) else PixmoError.from_os_error(exc)
        print(f"{program} {args.command}: {error.named(args.options)}", file=sys.stderr)
        return 2
