"""Fixtures for the agent's unit tests: an agent served from a thread of the
test process over a Unix socket, an agent started as ``python3 -m
kvmlite.agent`` in a process of its own, clients of both, and a polling
helper.  Socket paths live in short private directories under /tmp (a Unix
socket path holds at most 108 bytes)."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from kvmlite.agent.client import AgentClient, connect_unix
from kvmlite.agent.config import AgentConfig
from kvmlite.agent.server import Agent, listen_unix

REPO = Path(__file__).resolve().parents[3]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0,
               interval: float = 0.01) -> object:
    """Poll ``predicate`` until it is truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """The agent's working directory, private to the test."""
    path = Path(tempfile.mkdtemp(prefix="kla-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short private directory for the agent's socket, apart from its files."""
    path = Path(tempfile.mkdtemp(prefix="kls-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class ServedAgent:
    """An agent serving ``socket_path`` from threads of the test process."""

    agent: Agent
    socket_path: str

    def client(self, **kwargs: object) -> AgentClient:
        return AgentClient(lambda: connect_unix(self.socket_path), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def served(workdir: Path, sockdir: Path) -> Iterator[ServedAgent]:
    agent = Agent(AgentConfig(workdir=str(workdir), env={"KVMLITE_TEST": "1"}))
    path = str(sockdir / "agent.sock")
    agent.serve_in_thread(listen_unix(path))
    yield ServedAgent(agent, path)
    agent.close()


@pytest.fixture
def client(served: ServedAgent) -> AgentClient:
    return served.client(idle_timeout=10.0)


@dataclass
class AgentProcess:
    """``python3 -m kvmlite.agent --unix PATH`` running in a process of its own."""

    popen: subprocess.Popen[str]
    socket_path: str
    ready_line: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def client(self, **kwargs: object) -> AgentClient:
        return AgentClient(lambda: connect_unix(self.socket_path), **kwargs)  # type: ignore[arg-type]

    def open_fds(self) -> set[str]:
        return set(os.listdir(f"/proc/{self.pid}/fd"))


def start_agent_process(workdir: Path, sockdir: Path, *extra: str) -> AgentProcess:
    """Start the agent's entry point in ``workdir`` and wait for its ready line."""
    path = str(sockdir / "agent.sock")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    popen = subprocess.Popen([sys.executable, "-m", "kvmlite.agent", "--unix", path, *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=str(workdir))
    ready, _, _ = select.select([popen.stdout], [], [], 30.0)
    line = popen.stdout.readline() if ready else ""     # the agent's first line
    if not line:
        popen.kill()
        pytest.fail(f"the agent printed no ready line: {popen.stderr.read()}")
    return AgentProcess(popen, path, line.rstrip("\n"))


@pytest.fixture
def agent_process(workdir: Path, sockdir: Path) -> Iterator[AgentProcess]:
    proc = start_agent_process(workdir, sockdir)
    yield proc
    if proc.popen.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.popen.kill()
    proc.popen.wait()
    proc.popen.stdout.close()
    proc.popen.stderr.close()
