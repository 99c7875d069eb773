"""``kvmlite resume``: let a paused VM run again, its clock where it stopped."""

from __future__ import annotations

import argparse

from kvmlite.control.cli import add_target_arguments, for_each, selected_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, allow_all=True)


def run(args: argparse.Namespace) -> int:
    return for_each(selected_names(args), lambda vm: vm.resume())
