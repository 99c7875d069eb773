"""``kvmlite`` entry point: a command table in the style of kvmtool's
``builtin-*.c`` files.

Each command lives in ``kvmlite/cli/cmd_<name>.py`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, which keeps start-up
fast.  The CLI only turns arguments into configuration; the VM itself is
built from that configuration (see :mod:`kvmlite.vmm.builder`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from kvmlite.errors import KvmliteError


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    module: str  # dotted module name exposing add_arguments() and run()


# Keep HELP strings here (not in the modules) so `kvmlite help` imports nothing.
COMMANDS: tuple[Command, ...] = (
    Command("run", "Start a virtual machine", "kvmlite.cli.cmd_run"),
    Command("setup", "Prepare the default guest (kernel and initramfs) in the cache", "kvmlite.cli.cmd_setup"),
    Command("sandbox", "Run a command in a throwaway guest", "kvmlite.cli.cmd_sandbox"),
    Command("exec", "Run a command in a running sandbox through its agent", "kvmlite.cli.cmd_exec"),
    Command("list", "List running virtual machines", "kvmlite.cli.cmd_list"),
    Command("stop", "Stop a running virtual machine", "kvmlite.cli.cmd_stop"),
    Command("pause", "Pause a running virtual machine", "kvmlite.cli.cmd_pause"),
    Command("resume", "Resume a paused virtual machine", "kvmlite.cli.cmd_resume"),
    Command("snapshot", "Save a running virtual machine to a directory", "kvmlite.cli.cmd_snapshot"),
    Command("debug", "Print debug information from a running virtual machine", "kvmlite.cli.cmd_debug"),
    Command("stat", "Print statistics about a running virtual machine", "kvmlite.cli.cmd_stat"),
    Command("balloon", "Inflate or deflate a virtual machine's memory balloon", "kvmlite.cli.cmd_balloon"),
    Command("version", "Print the version of kvmlite", "kvmlite.cli.cmd_version"),
    Command("help", "Print this help, or the help of a command", "kvmlite.cli.cmd_help"),
)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit with status 2."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[name-defined]
        self.exit(2, f"{self.prog}: error: {message}\n")


def find_command(name: str) -> Command | None:
    for cmd in COMMANDS:
        if cmd.name == name:
            return cmd
    return None


def build_parser(cmd: Command) -> argparse.ArgumentParser:
    module = importlib.import_module(cmd.module)
    parser = _Parser(prog=f"kvmlite {cmd.name}", description=cmd.help)
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)
    return parser


def usage() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = ["usage: kvmlite [--version] [--help] <command> [<args>]", "", "The most commonly used kvmlite commands are:"]
    lines += [f"   {c.name:<{width}}   {c.help}" for c in COMMANDS]
    lines += ["", "See 'kvmlite help <command>' for more information on a specific command."]
    return "\n".join(lines)


def _split_passthrough(args: list[str]) -> tuple[list[str], list[str] | None]:
    """Everything after the first ``--`` is for the guest, not for us."""
    if "--" not in args:
        return args, None
    i = args.index("--")
    return args[:i], args[i + 1:]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] == "--version":
        args[0] = "version"
    cmd = find_command(args[0])
    if cmd is None:
        print(f"kvmlite: error: '{args[0]}' is not a kvmlite command. See 'kvmlite help'.", file=sys.stderr)
        return 2
    try:
        parser = build_parser(cmd)
        rest, passthrough = _split_passthrough(args[1:])
        ns = parser.parse_args(rest)
        ns.passthrough = passthrough
        run: Callable[[argparse.Namespace], int] = ns._run
        return int(run(ns) or 0)
    except KvmliteError as exc:
        print(f"kvmlite: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kvmlite: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
