"""Serial input reaching the guest through COM1's receive interrupt.

The serial-echo guest (tests/guests/src/serial_echo) routes IOAPIC pin 4
to its own IDT vector, enables the UART's "received data available"
interrupt (IER bit 0, MCR OUT2) and halts; its handler echoes every byte
uppercased and stops at '.'.  The test feeds kvmlite's stdin through a pipe
once the guest says it is ready.
"""

from __future__ import annotations

import pytest

from tests.kvm.conftest import LiveKvmlite, Run, fields

pytestmark = pytest.mark.kvm

EXIT_OK = 42


def echo(kernel: str, data: bytes) -> Run:
    live = LiveKvmlite("run", "-k", kernel, "-p", "timeout=90")
    live.wait_for("echo: ready")
    live.send(data)
    return live.finish()


def test_serial_input_is_echoed_through_the_receive_interrupt(kvm, guest) -> None:
    data = b"hello kvmlite."
    run = echo(str(guest("serial-echo")), data)
    assert run.status == EXIT_OK, run
    assert "HELLO KVMLITE." in run.stdout, run
    done = fields(run.stdout, "echo: done")
    assert int(done["bytes"]) == len(data), run
    assert int(done["interrupts"]) >= 1, run


def test_serial_input_longer_than_the_fifo_is_not_lost(kvm, guest) -> None:
    """64 bytes written at once: more than the 16550's 16-byte receive FIFO,
    so kvmlite must hold the rest until the guest has drained the FIFO."""
    data = (b"abcdefghijklmnopqrstuvwxyz0123456789" * 2)[:63] + b"."
    run = echo(str(guest("serial-echo")), data)
    assert run.status == EXIT_OK, run
    assert data.upper().decode() in run.stdout, run
    assert int(fields(run.stdout, "echo: done")["bytes"]) == len(data), run
