"""``kvmlite stop``: shut a VM down gracefully, or at once with ``--force``.

Graceful: the ACPI power button if the guest enabled it, else Ctrl-Alt-Del
through the i8042; the VM is stopped hard if it is still running after
``--timeout`` seconds (kvmlite/vmm/control.py).  The command waits until
the VMM has exited, unless ``--no-wait``.
"""

from __future__ import annotations

import argparse
import sys

from kvmlite.control.cli import add_target_arguments, seconds, selected_names
from kvmlite.control.client import ControlClient
from kvmlite.control.ops import DEFAULT_STOP_TIMEOUT, MAX_STOP_TIMEOUT
from kvmlite.errors import KvmliteError

EXIT_GRACE_S = 15.0      # after the VMM's own deadline, for it to tear down and exit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, allow_all=True)
    parser.add_argument("-f", "--force", action="store_true", help="stop at once, without asking the guest")
    parser.add_argument("--timeout", type=seconds(MAX_STOP_TIMEOUT), default=DEFAULT_STOP_TIMEOUT,
                        metavar="SECONDS", help="stop the VM hard if the guest has not shut down by then "
                                                f"(default {DEFAULT_STOP_TIMEOUT:g})")
    parser.add_argument("--no-wait", action="store_true", help="return once the stop has started")


def run(args: argparse.Namespace) -> int:
    names = selected_names(args)
    if not names:
        print("kvmlite: no VMs are running", file=sys.stderr)
        return 0
    started, failed = [], 0
    for name in names:
        try:
            started.append(_start_stop(name, args))
        except KvmliteError as exc:
            if len(names) == 1:
                raise
            print(f"kvmlite: error: {exc}", file=sys.stderr)
            failed += 1
    for client in started:
        failed += not _finish(client, args)
    return 1 if failed else 0


def _start_stop(name: str, args: argparse.Namespace) -> ControlClient:
    client = ControlClient(name)
    try:
        method = client.stop(force=args.force, timeout=args.timeout)
    except BaseException:
        client.close()
        raise
    print(f"{name}: stopping ({method})", flush=True)
    return client


def _finish(client: ControlClient, args: argparse.Namespace) -> bool:
    with client:
        if args.no_wait:
            return True
        limit = (0 if args.force else args.timeout) + EXIT_GRACE_S
        if client.wait_closed(limit):
            print(f"{client.name}: stopped")
            return True
    print(f"kvmlite: error: {client.name}: still running {limit:g} s after the stop request", file=sys.stderr)
    return False
