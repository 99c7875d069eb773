from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Iterator

import pytest

from kvmlite.arch.x86 import layout
from kvmlite.base.memory import GuestMemory
from tests.procs import leaked_descriptors, open_descriptors

if TYPE_CHECKING:
    from kvmlite.base.eventloop import EventLoop

SMALL_RAM = 1 << 20


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    """1 MiB of guest RAM: one region at guest-physical 0."""
    mem = GuestMemory(SMALL_RAM)
    yield mem
    mem.close()


@pytest.fixture(scope="session")
def split_memory() -> Iterator[GuestMemory]:
    """RAM in two regions, as x86 lays out a guest of more than 3 GiB: up to
    the PCI hole, and from 4 GiB.  Anonymous and NORESERVE, so only touched
    pages cost anything."""
    mem = GuestMemory(layout.MMIO_HOLE_START + (2 << 20))
    assert len(mem.regions) == 2
    yield mem
    mem.close()


@pytest.fixture(scope="module")
def disk_loop() -> Iterator["EventLoop"]:
    """A running event loop standing in for a disk's own (``vmm/devices.py``)."""
    from kvmlite.base.eventloop import EventLoop

    loop = EventLoop("test-disk-loop")
    loop.start()
    yield loop
    loop.close()


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """The test leaves the process with the descriptors it found (devices
    close theirs on their loop's thread, hence the wait).  Modules that
    want it for every test name it in ``pytestmark``."""
    from tests.unit.devices.virtio.fakedriver import wait_until

    gc.collect()                # no earlier test's garbage closes a descriptor mid-test
    before = open_descriptors()
    yield
    assert wait_until(lambda: not leaked_descriptors(before), timeout=5), \
        f"host file descriptors leaked: {sorted(leaked_descriptors(before))}"


@pytest.fixture(scope="module")
def loop(request: pytest.FixtureRequest) -> Iterator["EventLoop"]:
    """A running event loop standing in for a device's own, one per module
    (modules whose tests need a fresh one define their own ``loop``)."""
    from kvmlite.base.eventloop import EventLoop

    event_loop = EventLoop(f"test-{request.module.__name__.rsplit('.', 1)[-1]}")
    event_loop.start()
    yield event_loop
    event_loop.close()
