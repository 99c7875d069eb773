"""``kvmlite pause``: park every vCPU of a VM out of KVM_RUN, holding its clock."""

from __future__ import annotations

import argparse

from kvmlite.control.cli import add_target_arguments, for_each, seconds, selected_names
from kvmlite.control.ops import DEFAULT_PAUSE_TIMEOUT, MAX_PAUSE_TIMEOUT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, allow_all=True)
    parser.add_argument("--timeout", type=seconds(MAX_PAUSE_TIMEOUT), default=DEFAULT_PAUSE_TIMEOUT, metavar="SECONDS",
                        help=f"how long the vCPUs may take to stop (default {DEFAULT_PAUSE_TIMEOUT:g})")


def run(args: argparse.Namespace) -> int:
    return for_each(selected_names(args), lambda vm: vm.pause(args.timeout))
