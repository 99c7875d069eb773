"""``kvmlite exec -n NAME [options] [--] CMD [ARGS...]``: run a command in a
running sandbox through its agent (docker exec's shape).

The VM must have been started with an agent (``kvmlite sandbox --agent``,
or the SDK's ``Sandbox``).  The command's stdout and stderr come to ours as
they are produced; its exit status is kvmlite's (128+N when a signal N
ended it).  One argument is a shell line for ``/bin/sh -c``; several are an
argv, as with ``kvmlite run --``.
"""

from __future__ import annotations

import argparse
import sys

from kvmlite.errors import KvmliteError, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "kvmlite exec -n NAME [options] [--] CMD [ARGS...]"
    parser.add_argument("-n", "--name", required=True, help="the sandbox's name (see 'kvmlite list')")
    parser.add_argument("-u", "--user", help="run as this user name or uid (default: the agent's, root)")
    parser.add_argument("-w", "--workdir", help="working directory in the guest")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the command; repeatable")
    parser.add_argument("-i", "--interactive", action="store_true",
                        help="send our standard input to the command (read to its end first)")
    parser.add_argument("-t", "--timeout", type=float, default=None, metavar="SECONDS",
                        help="kill the command after SECONDS")
    parser.add_argument("command", nargs="*", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from kvmlite.agent.errors import CommandExitError, SandboxError
    from kvmlite.sdk import Sandbox

    command = list(args.command) + list(getattr(args, "passthrough", None) or [])
    if not command:
        raise UsageError("give the command to run: kvmlite exec -n NAME -- CMD [ARGS...]")
    envs = dict(_env(text) for text in args.env)
    stdin = sys.stdin.buffer.read() if args.interactive else None
    try:
        sandbox = Sandbox.connect(args.name)
        result = sandbox.commands.run(command[0] if len(command) == 1 else command, envs=envs, cwd=args.workdir,
                                      user=args.user if args.user is not None else 0, stdin=stdin,
                                      timeout=args.timeout, on_stdout=_writer(sys.stdout),
                                      on_stderr=_writer(sys.stderr))
    except CommandExitError as exc:
        return _status(exc.result)
    except SandboxError as exc:
        raise KvmliteError(str(exc)) from None
    return _status(result)


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"-e {text!r}: write KEY=VALUE")
    return key, value


def _writer(stream):  # type: ignore[no-untyped-def]
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()
    return write


def _status(result) -> int:  # type: ignore[no-untyped-def]
    code = result.exit_code
    return code if isinstance(code, int) and 0 <= code <= 255 else 1
