"""Fixtures for the control-plane unit tests: a private runtime directory
short enough for Unix socket paths (108 bytes), a fake VM, and servers on
real sockets that are always closed."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from kvmlite.control.registry import Registry
from kvmlite.control.server import ControlServer, Limits

from .fakes import FakeTarget


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """$XDG_RUNTIME_DIR for this test (so Registry() and the CLI use it)."""
    base = Path(tempfile.mkdtemp(prefix="klc-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    yield base / "kvmlite"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def registry(runtime: Path) -> Registry:
    return Registry(runtime)


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
def serve(registry: Registry, target: FakeTarget) -> Iterator[Callable[..., ControlServer]]:
    """``serve(name="vm", limits=Limits(), target=None)``: a started server."""
    servers: list[ControlServer] = []

    def start(name: str = "vm", limits: Limits = Limits(), target_: FakeTarget | None = None) -> ControlServer:
        server = ControlServer(target_ or target, name, registry=registry, limits=limits)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


class Raw:
    """A bare socket speaking the protocol by hand (for malformed input)."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed; got {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def closed(self) -> bool:
        """True if the server closed the connection (after any pending data)."""
        try:
            while chunk := self.sock.recv(65536):
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[Callable[[Path], Raw]]:
    conns: list[Raw] = []

    def connect(path: Path, timeout: float = 5.0) -> Raw:
        conns.append(Raw(path, timeout))
        return conns[-1]

    yield connect
    for conn in conns:
        conn.close()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a file to another user")
