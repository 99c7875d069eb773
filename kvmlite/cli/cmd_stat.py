"""``kvmlite stat``: exits per vCPU, I/O per device, the VMM's memory."""

from __future__ import annotations

import argparse
import sys

from kvmlite.control.cli import add_json_argument, add_target_arguments, print_json, selected_names
from kvmlite.control.client import ControlClient
from kvmlite.control.render import stats_text
from kvmlite.errors import KvmliteError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, allow_all=True)
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    names = selected_names(args)
    collected: dict[str, object] = {}
    failed = False
    for name in names:
        try:
            with ControlClient(name) as vm:
                collected[name] = stats = vm.stats()
        except KvmliteError as exc:
            if len(names) == 1:
                raise
            print(f"kvmlite: error: {exc}", file=sys.stderr)
            failed = True
            continue
        if not args.json:
            print(stats_text(name, stats))
    if args.json:
        print_json(collected if args.all else collected[names[0]])
    return 1 if failed else 0
