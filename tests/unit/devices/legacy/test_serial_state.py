"""Snapshot and restore of the 16550A: state driven through the ports,
saved, passed through JSON, loaded into a fresh UART, compared by behaviour."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvmlite.base.state import StateError
from kvmlite.devices.legacy import serial as uart

from .test_serial import FCR, IER, IIR, LCR, LSR, MCR, MSR, RBR, SCR, THR, Rig


def round_trip(rig: Rig) -> Rig:
    state = json.loads(json.dumps(rig.serial.save_state()))
    fresh = Rig()
    fresh.serial.restore_state(state)
    return fresh


def busy_rig() -> Rig:
    """Linux's start-up, a divisor, scratch value, 20 typed bytes (16 in the
    FIFO, 4 still on the wire) and a break behind them."""
    rig = Rig()
    rig.startup(uart.IER_ERBFI | uart.IER_ELSI)
    rig.io.outb(SCR, 0x5A)
    rig.serial.enqueue_input(bytes(range(0x41, 0x41 + 20)))
    rig.serial.send_break()
    return rig


def test_serial_restore_keeps_registers_and_divisor() -> None:
    rig = busy_rig()
    fresh = round_trip(rig)
    io, old = fresh.io, rig.io

    for port in (IER, LCR, MCR, SCR):
        assert io.inb(port) == old.inb(port)
    io.outb(LCR, 0x83)
    assert (io.inb(THR), io.inb(IER)) == (1, 0)       # DLL/DLM: 115200 baud
    assert io.inb(IIR) & uart.IIR_FIFOS_ENABLED == uart.IIR_FIFOS_ENABLED


def test_serial_restore_delivers_pending_input_and_break() -> None:
    rig = busy_rig()
    fresh = round_trip(rig)

    assert fresh.irq.level                             # RX data pending, OUT2 set
    assert fresh.io.inb(IIR) & 0x0F == uart.IIR_RX_DATA
    # the 4 bytes left on the wire follow the FIFO's 16, then the break's 0
    assert fresh.drain() == rig.drain() == bytes(range(0x41, 0x41 + 20)) + b"\0"


def test_serial_restore_break_reaches_the_guest() -> None:
    rig = Rig()
    rig.startup(uart.IER_ELSI)
    rig.serial.send_break()
    fresh = round_trip(rig)

    assert fresh.irq.level
    assert fresh.io.inb(IIR) & 0x0F == uart.IIR_LINE_STATUS
    assert fresh.io.inb(LSR) & (uart.LSR_BI | uart.LSR_DR) == uart.LSR_BI | uart.LSR_DR
    assert fresh.io.inb(RBR) == 0


def test_serial_restore_keeps_thre_latch_and_msr_deltas() -> None:
    rig = Rig()
    rig.startup(uart.IER_ETBEI | uart.IER_EDSSI)
    rig.io.outb(MCR, uart.MCR_LOOP | uart.MCR_RTS)     # modem lines change: deltas
    rig.io.outb(MCR, uart.MCR_DTR | uart.MCR_RTS | uart.MCR_OUT2)
    fresh = round_trip(rig)

    assert fresh.irq.level
    assert fresh.io.inb(IIR) & 0x0F == uart.IIR_THR_EMPTY   # the latch survived
    assert fresh.io.inb(IIR) & 0x0F == uart.IIR_MODEM_STATUS
    assert fresh.io.inb(MSR) == rig.io.inb(MSR)
    assert fresh.io.inb(IIR) & 0x0F == uart.IIR_NO_INT
    assert not fresh.irq.level


def test_serial_restore_drives_a_low_line_low() -> None:
    fresh = round_trip(Rig())

    assert fresh.irq.history == [False]
    fresh.io.outb(THR, 0x41)
    assert fresh.output == b"A"


def test_serial_restore_keeps_loopback_fifo() -> None:
    rig = Rig()
    rig.startup(0)
    rig.io.outb(MCR, uart.MCR_LOOP)
    rig.io.outb(THR, 0x33)
    rig.serial.enqueue_input(b"wire")          # waits: loopback disconnects the wire
    fresh = round_trip(rig)

    assert fresh.drain() == b"\x33"
    fresh.io.outb(MCR, uart.MCR_OUT2)
    assert fresh.drain() == b"wire"


def _state() -> dict[str, Any]:
    return json.loads(json.dumps(busy_rig().serial.save_state()))


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("ier"), "lacks 'ier'"),
    (lambda s: s.update(lcr="3"), "lcr is str"),
    (lambda s: s.update(mcr=0x20), "mcr=32 is outside"),
    (lambda s: s.update(rx_trigger=5), "trigger level"),
    (lambda s: s.update(msr=0), "disagrees with mcr"),
    (lambda s: s.update(fifo_enabled=False), "FIFO 1"),
    (lambda s: s["rx"].update(bytes="!!"), "base64"),
    (lambda s: s["input"].update(breaks=[0]), "not a 0 character"),
    (lambda s: s.update(thr_pending=1), "expected true or false"),
])
def test_serial_restore_rejects_bad_state(change: Any, words: str) -> None:
    state = _state()
    change(state)
    fresh = Rig()

    with pytest.raises(StateError, match="serial com1") as info:
        fresh.serial.restore_state(state, "serial com1")
    assert words in str(info.value)
    assert fresh.irq.history == [] and fresh.io.inb(SCR) == 0     # nothing applied


def test_serial_restore_rejects_input_over_the_limit() -> None:
    state = _state()
    small = Rig(input_limit=2)
    with pytest.raises(StateError, match="serial: input holds 4 bytes"):
        small.serial.restore_state(state)


def test_serial_state_is_fcr_independent() -> None:
    rig = Rig()
    rig.io.outb(FCR, 0)
    rig.serial.enqueue_input(b"xy")
    fresh = round_trip(rig)
    assert fresh.drain() == b"xy"
