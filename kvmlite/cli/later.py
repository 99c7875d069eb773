"""Shared body of the commands that are not implemented yet."""

from __future__ import annotations

import argparse

from kvmlite.errors import KvmliteError


def not_yet(name: str) -> int:
    raise KvmliteError(f"'kvmlite {name}' is not available in this version yet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
