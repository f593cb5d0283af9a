"""`owl3 <command>`: the command table and the one place a user's mistake becomes one line and exit code 2.

Each command's parser and function live with its feature; `COMMANDS` names the modules whose
`add_parser(sub)` registers them, in the order `owl3 --help` lists them. Those modules import neither
torch nor PIL when imported (their commands import what they need when run), so `owl3 --help` and every
`owl3 COMMAND --help` stay fast (tests/test_layers.py checks it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import import_module
from typing import NoReturn

from owl3.errors import Owl3Error

PROG = "owl3"

COMMANDS = (
    "owl3.generate",  # generate, encode, chat
    "owl3.bench.command",  # bench latency | video | memory
    "owl3.evaluation.command",  # eval compare (and the tasks features add: eval synthetic)
    "owl3.demo.command",  # demo, demo-train, eval synthetic
    "owl3.training.cli",  # train, build
    "owl3.serving.command",  # serve
    "owl3.kb.command",  # kb build | add | search | info
)


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake in the arguments on one line that names the help to read (its
    subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command that `args` picked, e.g. `owl3 eval mmbench`'s."""
    for action in parser._actions:
        name = getattr(args, action.dest, None)
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return _chosen(action.choices[name], args)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="owl3: run mPLUG-Owl3 on images, many images and videos.",
        epilog="Run 'owl3 COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        import_module(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):
        parser.print_help(sys.stderr)  # a bare `owl3`: what it can do
        return 2
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command that was given them, with its --help
        _chosen(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args)
    except Owl3Error as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`owl3 bench latency | head`): stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
