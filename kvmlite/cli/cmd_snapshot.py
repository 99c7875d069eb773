"""``kvmlite snapshot -n NAME DIR [--stop]``: save a running VM to DIR.

The VM pauses, its whole state and memory go to DIR (new or empty), and it
resumes, or with ``--stop`` ends.  ``kvmlite run --restore DIR`` starts it
again (docs/snapshot.md)."""

from __future__ import annotations

import argparse
import os

from kvmlite.control.cli import add_target_arguments, selected_names
from kvmlite.control.client import ControlClient


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, allow_all=False)
    parser.add_argument("directory", metavar="DIR", help="where to save the VM (made if missing; must be empty)")
    parser.add_argument("--stop", action="store_true", help="end the VM once it is saved instead of resuming it")


def run(args: argparse.Namespace) -> int:
    (name,) = selected_names(args)
    directory = os.path.abspath(args.directory)
    with ControlClient(name) as client:
        summary = client.snapshot(directory, stop=args.stop)
    mib = summary.get("memory_bytes", 0) / (1 << 20)
    then = "stopped" if args.stop else "running"
    print(f"{name}: saved to {directory} ({mib:.0f} MiB of memory, {summary.get('seconds', 0):.2f} s); {then}")
    return 0
