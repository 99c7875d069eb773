"""The guest-exit port."""

from __future__ import annotations

from kvmlite.arch.x86 import layout
from kvmlite.devices.legacy.debug_exit import PORT_COUNT, GuestExit

from .portio import PortIo


def make() -> tuple[PortIo, list[int]]:
    statuses: list[int] = []
    io = PortIo()
    io.bus.register(layout.PORT_GUEST_EXIT, PORT_COUNT, GuestExit(statuses.append), "guest-exit")
    return io, statuses


def test_guest_exit_byte_written_is_the_exit_status() -> None:
    io, statuses = make()

    io.outb(layout.PORT_GUEST_EXIT, 42)

    assert statuses == [42]


def test_guest_exit_wide_write_uses_first_byte() -> None:
    io, statuses = make()

    io.outl(layout.PORT_GUEST_EXIT, 0x12345603)

    assert statuses == [0x03]


def test_guest_exit_reads_ff_and_do_not_exit() -> None:
    io, statuses = make()

    value = io.inw(layout.PORT_GUEST_EXIT)

    assert value == 0xFFFF
    assert statuses == []
