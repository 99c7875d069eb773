from __future__ import annotations

from typing import Iterator

import pytest

from kvmlite.arch.x86 import layout
from kvmlite.base.memory import GuestMemory

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
