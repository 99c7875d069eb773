"""``sandbox.commands``: E2B's ``Commands`` over the agent client."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from kvmlite.agent.client import AgentClient
from kvmlite.agent.handle import CommandHandle, OutputCallback
from kvmlite.agent.results import CommandResult, ProcessInfo

DEFAULT_COMMAND_TIMEOUT = 60.0     # seconds (E2B's default); 0 or None: none


def default_user() -> str:
    """Commands run as the calling user's uid unless told otherwise (the
    sandbox's home, /home/user, belongs to it)."""
    return str(os.getuid())


class Commands:
    """Run commands in the sandbox: ``run``, ``list``, ``kill``, ``connect``,
    ``send_stdin``, ``close_stdin``."""

    def __init__(self, agent: AgentClient, envs: Mapping[str, str]) -> None:
        self._agent = agent
        self._envs = dict(envs)

    def run(self, cmd: str | Sequence[str], background: bool = False, envs: Mapping[str, str] | None = None,
            user: str | int | None = None, cwd: str | None = None, on_stdout: OutputCallback | None = None,
            on_stderr: OutputCallback | None = None, stdin: str | bytes | bool | None = None,
            timeout: float | None = DEFAULT_COMMAND_TIMEOUT,
            max_output: int | None = None) -> CommandResult | CommandHandle:
        """Run ``cmd`` (a shell line for ``/bin/sh -c``, or an argv list).

        Foreground: the :class:`CommandResult` (stdout, stderr, exit_code);
        a non-zero exit raises ``CommandExitError`` carrying it, as E2B's
        does.  ``background=True``: a handle (pid, wait, kill).  ``timeout``
        kills the command's process group."""
        merged = {**self._envs, **(envs or {})}
        return self._agent.run(cmd, envs=merged, cwd=cwd, user=user if user is not None else default_user(),
                               stdin=stdin, timeout=timeout, on_stdout=on_stdout, on_stderr=on_stderr,
                               background=background, max_output=max_output)

    def list(self) -> list[ProcessInfo]:
        """The commands running in the sandbox."""
        return self._agent.list_processes()

    def kill(self, pid: int) -> bool:
        """SIGKILL the command ``pid`` (its process group); False when there is none."""
        return self._agent.kill(pid)

    def connect(self, pid: int, on_stdout: OutputCallback | None = None,
                on_stderr: OutputCallback | None = None) -> CommandHandle:
        """A handle on a running command: its output from now on, and its end."""
        return self._agent.connect(pid, on_stdout=on_stdout, on_stderr=on_stderr)

    def send_stdin(self, pid: int, data: str | bytes) -> None:
        self._agent.send_stdin(pid, data)

    def close_stdin(self, pid: int) -> None:
        self._agent.close_stdin(pid)
