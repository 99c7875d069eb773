"""Ports that need no model (0x80, 0xED) and System Control Port A (0x92)."""

from __future__ import annotations

from kvmlite.arch.x86 import layout
from kvmlite.devices.legacy.ignored import PORT_IO_DELAY_ALT, IgnoredPort
from kvmlite.devices.legacy.port92 import ALT_A20, ALT_RESET, PORT_SYSTEM_CONTROL_A, SystemControlPortA

from .portio import PortIo


def test_ignored_port_swallows_writes_and_keeps_last_post_code() -> None:
    post = IgnoredPort("post")
    io = PortIo()
    io.bus.register(layout.PORT_POST, 1, post, "post")

    io.outb(layout.PORT_POST, 0x12)
    io.outb(layout.PORT_POST, 0x34)

    assert (post.writes, post.last_value) == (2, 0x34)
    assert io.inb(layout.PORT_POST) == 0xFF


def test_ignored_delay_port_reads_ff() -> None:
    io = PortIo()
    io.bus.register(PORT_IO_DELAY_ALT, 1, IgnoredPort("io-delay"), "io-delay")

    io.outb(PORT_IO_DELAY_ALT, 0)

    assert io.inb(PORT_IO_DELAY_ALT) == 0xFF


class Port92Rig:
    def __init__(self) -> None:
        self.resets = 0
        self.io = PortIo()
        self.io.bus.register(PORT_SYSTEM_CONTROL_A, 1, SystemControlPortA(self._reset), "port92")

    def _reset(self) -> None:
        self.resets += 1


def test_port92_fast_a20_enable_without_reset_bit_does_not_reset() -> None:
    # arch/x86/boot/a20.c enable_a20_fast: set bit 1, clear bit 0.
    rig = Port92Rig()

    value = rig.io.inb(PORT_SYSTEM_CONTROL_A)
    rig.io.outb(PORT_SYSTEM_CONTROL_A, (value | ALT_A20) & ~ALT_RESET)

    assert rig.resets == 0
    assert rig.io.inb(PORT_SYSTEM_CONTROL_A) & ALT_A20


def test_port92_reset_bit_resets() -> None:
    rig = Port92Rig()

    rig.io.outb(PORT_SYSTEM_CONTROL_A, ALT_A20 | ALT_RESET)

    assert rig.resets == 1
    assert rig.io.inb(PORT_SYSTEM_CONTROL_A) & ALT_RESET == 0


def test_port92_a20_cannot_be_turned_off() -> None:
    rig = Port92Rig()

    rig.io.outb(PORT_SYSTEM_CONTROL_A, 0x00)

    assert rig.io.inb(PORT_SYSTEM_CONTROL_A) & ALT_A20


def test_port92_other_bits_read_back() -> None:
    rig = Port92Rig()

    rig.io.outb(PORT_SYSTEM_CONTROL_A, 0xC8)     # activity lights and the lock bit

    assert rig.io.inb(PORT_SYSTEM_CONTROL_A) == 0xC8 | ALT_A20
