from __future__ import annotations

import gc
from pathlib import Path
from typing import Iterator

import pytest

from kvmlite.devices.virtio.p9.server import P9Server
from tests.procs import leaked_descriptors, open_descriptors
from tests.unit.devices.virtio.p9.client import P9Client


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    """Every test leaves the process with no descriptor it did not find."""
    gc.collect()
    before = open_descriptors()
    yield
    leaked = leaked_descriptors(before)
    assert not leaked, f"host file descriptors leaked: {sorted(leaked)}"


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host file beside the share that the guest must never reach."""
    path = tmp_path / "secret"
    path.write_bytes(b"host secret\n")
    return path


@pytest.fixture
def resolver() -> str:
    """How the share resolves names: "openat2", or "walk" (the O_PATH walk kept
    for kernels without openat2).  The escape tests run with both."""
    return "openat2"


def make_server(root: Path, resolver: str = "openat2", readonly: bool = False, **kw: object) -> P9Server:
    server = P9Server(root, readonly=readonly, **kw)   # type: ignore[arg-type]
    if resolver == "walk":
        server._share._use_openat2 = False
    return server


@pytest.fixture
def server(share: Path, resolver: str) -> Iterator[P9Server]:
    srv = make_server(share, resolver)
    yield srv
    srv.close()


@pytest.fixture
def client(server: P9Server) -> P9Client:
    """Version agreed and fid 0 attached at the root."""
    c = P9Client(server)
    c.version()
    c.attach(0)
    return c
