"""What the control commands (``kvmlite list/stop/pause/resume/debug/stat``)
share: the ``--name``/``--all`` options, choosing the VMs, and running one
request per VM with one line of output (or of error) each.

Option names follow lkvm's: ``-n/--name NAME``, ``-a/--all``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from kvmlite.control.client import ControlClient, list_instances
from kvmlite.control.registry import check_name
from kvmlite.errors import KvmliteError, UsageError

Action = Callable[[ControlClient], str]


def add_target_arguments(parser: argparse.ArgumentParser, *, allow_all: bool) -> None:
    parser.add_argument("-n", "--name", help="the VM's name (see 'kvmlite list')")
    if allow_all:
        parser.add_argument("-a", "--all", action="store_true", help="every running VM")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def seconds(high: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds above 0 and at most ``high``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value <= high:          # also false for nan
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0 and at most {high:g}")
        return value
    return parse


def selected_names(args: argparse.Namespace) -> list[str]:
    """The names ``--name``/``--all`` pick (``--all``: every live VM, maybe none)."""
    every = getattr(args, "all", False)
    if every and args.name:
        raise UsageError("give either --name NAME or --all, not both")
    if every:
        return [instance.name for instance in list_instances()]
    if not args.name:
        raise UsageError("which VM? give --name NAME" + (" or --all" if hasattr(args, "all") else "")
                         + " (see 'kvmlite list')")
    return [check_name(args.name)]


def for_each(names: list[str], action: Action) -> int:
    """Run ``action`` on each VM and print ``NAME: <what it returned>``.

    With one VM an error propagates (the CLI prints it as one line); with
    several, each failure is printed and the status is 1 if any failed.
    """
    if not names:
        print("kvmlite: no VMs are running", file=sys.stderr)
        return 0
    if len(names) == 1:
        print(f"{names[0]}: {_act(names[0], action)}")
        return 0
    failed = 0
    for name in names:
        try:
            print(f"{name}: {_act(name, action)}")
        except KvmliteError as exc:
            print(f"kvmlite: error: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _act(name: str, action: Action) -> str:
    with ControlClient(name) as client:
        return action(client)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))
