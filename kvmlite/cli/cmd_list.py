"""``kvmlite list``: the running VMs (name, pid, state, vCPUs, memory, uptime).

Stale entries left by a VMM that died are removed on the way.
"""

from __future__ import annotations

import argparse

from kvmlite.control.cli import add_json_argument, print_json
from kvmlite.control.client import list_instances
from kvmlite.control.render import list_json, list_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", "--all", action="store_true",
                        help="every VM, also one that does not answer (the default; for lkvm compatibility)")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    instances = list_instances()
    if args.json:
        print_json([list_json(i) for i in instances])
    else:
        print(list_table(instances))
    return 0
