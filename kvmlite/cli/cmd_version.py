"""``kvmlite version``"""

from __future__ import annotations

import argparse

from kvmlite import __version__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print(f"kvmlite version {__version__}")
    return 0
