"""eventfd signal/drain (the GIL-holding calls of the interrupt and
notification paths) on real eventfds."""

from __future__ import annotations

import os

import pytest

from kvmlite.base import eventfd


@pytest.fixture
def fd():
    fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    yield fd
    os.close(fd)


def test_signal_adds_one_and_drain_resets(fd: int) -> None:
    assert not eventfd.drain(fd)          # nothing signalled yet
    eventfd.signal(fd)
    eventfd.signal(fd)
    assert os.eventfd_read(fd) == 2
    eventfd.signal(fd)
    assert eventfd.drain(fd)
    assert not eventfd.drain(fd)


def test_signal_on_a_saturated_counter_leaves_it_signalled(fd: int) -> None:
    os.eventfd_write(fd, 0xFFFF_FFFF_FFFF_FFFE)   # the largest counter value
    eventfd.signal(fd)                               # would block: it is already signalled
    assert os.eventfd_read(fd) == 0xFFFF_FFFF_FFFF_FFFE


def test_errors_are_oserrors_with_the_reason() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError, match="eventfd write: Bad file descriptor"):
        eventfd.signal(w)
    with pytest.raises(OSError, match="eventfd read: Bad file descriptor"):
        eventfd.drain(r)
