"""``kvmlite help [COMMAND]``"""

from __future__ import annotations

import argparse

from kvmlite.cli import main as cli
from kvmlite.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("command", nargs="?", help="command to describe")


def run(args: argparse.Namespace) -> int:
    if not args.command:
        print(cli.usage())
        return 0
    cmd = cli.find_command(args.command)
    if cmd is None:
        raise UsageError(f"'{args.command}' is not a kvmlite command. See 'kvmlite help'.")
    cli.build_parser(cmd).print_help()
    return 0
