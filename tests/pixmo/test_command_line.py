"""The plumbing both command lines share (``pixmo.command_line``): usage errors and user
errors as one line with exit status 2, ``-v`` and the loggers it quiets."""

from __future__ import annotations

import errno
import logging

import pytest

from pixmo.command_line import ArgumentParser, command_parser, run_command
from pixmo.errors import ConfigError, PixmoError


def _parser() -> ArgumentParser:
    parser, sub = command_parser("prog", "A test program.")
    p = sub.add_parser("go")
    p.add_argument("--n", type=int, default=1)
    p.set_defaults(options={"Thing.n": "--n"})
    return parser


def test_usage_errors_are_one_line_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["go", "--n", "many"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "prog go: argument --n: invalid int value: 'many'\n"


def test_a_command_is_required_and_verbose_is_shared(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args([])
    assert capsys.readouterr().err == ("prog: the following arguments are required: "
                                       "command\n")
    args = _parser().parse_args(["-v", "go"])
    assert (args.verbose, args.command, args.n) == (True, "go", 1)
    assert _parser().parse_args(["go"]).verbose is False


@pytest.mark.parametrize(("error", "line"), [
    (ConfigError("must be >= 1, got 0", field="Thing.n"), "prog go: --n must be >= 1, got 0\n"),
    (ConfigError("must be >= 0, got -1", field="Other.m"),
     "prog go: Other.m must be >= 0, got -1\n"),
    (PixmoError("no sample with this key", file="d", record="k"),
     "prog go: d, record k: no sample with this key\n"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.txt"),
     "prog go: x.txt: No such file or directory\n"),
])
def test_user_errors_are_one_line_named_by_the_option(capsys, error, line):
    def fail() -> int:
        raise error

    assert run_command("prog", _parser().parse_args(["go"]), fail) == 2
    assert capsys.readouterr().err == line


def test_other_errors_are_not_user_errors():
    def fail() -> int:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_command("prog", _parser().parse_args(["go"]), fail)


@pytest.mark.parametrize(("argv", "level"), [(["go"], logging.WARNING),
                                             (["-v", "go"], logging.NOTSET)])
def test_quiet_loggers_stay_quiet_unless_verbose(argv, level):
    noisy = logging.getLogger("tests.noisy_engine")
    noisy.setLevel(logging.NOTSET)
    try:
        assert run_command("prog", _parser().parse_args(argv), lambda: 0,
                           quiet=["tests.noisy_engine"]) == 0
        assert noisy.level == level
    finally:
        noisy.setLevel(logging.NOTSET)

