"""What the client returns: command results, file entries, processes, the agent."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class AgentInfo:
    """The agent's hello: protocol ``version``, ``agent_version``, its pid and uname."""

    version: int
    agent_version: str
    pid: int
    uname: dict[str, str]
    keepalive: float | None = None

    @classmethod
    def from_wire(cls, msg: dict[str, Any]) -> AgentInfo:
        return cls(int(msg["version"]), str(msg.get("agent_version", "")),
                   int(msg.get("pid", 0)), dict(msg.get("uname") or {}), msg.get("keepalive"))


@dataclass(frozen=True)
class CommandResult:
    """How a command ended and what it wrote (E2B's ``CommandResult``, extended).

    ``stdout``/``stderr`` are the output decoded as UTF-8 with invalid bytes
    replaced; ``stdout_bytes``/``stderr_bytes`` the raw bytes.  Both hold at
    most the client's ``max_output`` bytes: ``stdout_truncated`` says the
    command wrote more, ``stdout_size`` how much in all (callbacks saw it
    all).  ``exit_code`` is the status, or 128 + ``signal`` when a signal
    killed the command; ``error`` says so in words (None after a normal
    exit).  ``stdout_dropped`` counts bytes the agent dropped while no
    client was attached (background commands only).
    """

    exit_code: int
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    error: str | None = None
    signal: int | None = None
    pid: int | None = None
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_size: int = 0
    stderr_size: int = 0
    stdout_dropped: int = 0
    stderr_dropped: int = 0

    @cached_property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @cached_property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")


@dataclass(frozen=True)
class EntryInfo:
    """A file, directory or link in the sandbox (E2B's ``EntryInfo``, extended).

    ``type`` is ``file``, ``dir``, ``symlink`` or ``other``; ``mode`` the
    permission bits (``0o644``), ``permissions`` the ``ls -l`` string.
    """

    name: str
    path: str
    type: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    uid: int
    gid: int
    modified_time: datetime.datetime
    symlink_target: str | None = None

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> EntryInfo:
        mtime = datetime.datetime.fromtimestamp(float(d["mtime"]), datetime.timezone.utc)
        return cls(d["name"], d["path"], d["type"], int(d["size"]), int(d["mode"]),
                   d["permissions"], d["owner"], d["group"], int(d["uid"]), int(d["gid"]),
                   mtime, d.get("symlink_target"))


@dataclass(frozen=True)
class ProcessInfo:
    """A process the agent started (E2B's ``ProcessInfo``, extended)."""

    pid: int
    cmd: str
    args: list[str]
    envs: dict[str, str]
    cwd: str
    user: str | None
    background: bool
    started_at: float
    running: bool
    exit_code: int | None

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ProcessInfo:
        return cls(int(d["pid"]), d["cmd"], list(d["args"]), dict(d.get("env") or {}),
                   d["cwd"], d.get("user"), bool(d["background"]), float(d["started_at"]),
                   bool(d["running"]), d.get("exit_code"))
