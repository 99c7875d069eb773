"""``kvmlite sandbox``: not implemented yet."""

from __future__ import annotations

import argparse

from kvmlite.cli.later import add_arguments, not_yet

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    return not_yet("sandbox")
