"""The 16550A, driven the way Linux's 8250 driver drives it."""

from __future__ import annotations

import random
import threading

import pytest

from kvmlite.arch.x86 import layout
from kvmlite.devices.irq import RecordingIrqLine
from kvmlite.devices.legacy import serial as uart
from kvmlite.devices.legacy.serial import Serial

from .portio import PortIo

COM1 = layout.PORT_COM[0]
RBR, THR, IER, IIR, FCR, LCR, MCR, LSR, MSR, SCR = (
    COM1 + 0, COM1 + 0, COM1 + 1, COM1 + 2, COM1 + 2, COM1 + 3, COM1 + 4, COM1 + 5, COM1 + 6, COM1 + 7)
EFR = COM1 + 2              # what the 8250 driver calls offset 2 when LCR = 0xBF


class Rig:
    def __init__(self, sink: bool = True, input_limit: int = uart.DEFAULT_INPUT_LIMIT) -> None:
        self.irq = RecordingIrqLine()
        self.output = bytearray()
        self.serial = Serial(self.irq, self.output.extend if sink else None, input_limit=input_limit)
        self.io = PortIo()
        self.io.bus.register(COM1, uart.REGISTER_COUNT, self.serial, "com1")

    def startup(self, ier: int) -> None:
        """What serial8250_do_startup + set_termios leave: 8N1, FIFO on with
        an 8-byte trigger, DTR|RTS|OUT2, interrupts enabled."""
        io = self.io
        io.outb(LCR, uart.LCR_DLAB)
        io.outb(THR, 1)             # DLL: 115200 baud
        io.outb(IER, 0)             # DLM
        io.outb(LCR, 0x03)
        io.outb(FCR, uart.FCR_ENABLE | uart.FCR_CLEAR_RX | uart.FCR_CLEAR_TX | 0x80)
        io.outb(MCR, uart.MCR_DTR | uart.MCR_RTS | uart.MCR_OUT2)
        io.outb(IER, ier)

    def drain(self) -> bytes:
        """serial8250_rx_chars: read while LSR says DR."""
        got = bytearray()
        while self.io.inb(LSR) & uart.LSR_DR:
            got.append(self.io.inb(RBR))
        return bytes(got)


# --- probing (8250_port.c: autoconfig, autoconfig_16550a) ---

def test_serial_autoconfig_ier_probe_reads_back_low_nibble_only() -> None:
    rig = Rig()
    io = rig.io

    io.outb(IER, 0)
    cleared = io.inb(IER)
    io.outb(IER, 0xFF)
    set_all = io.inb(IER)

    assert (cleared, set_all) == (0x00, 0x0F)


def test_serial_autoconfig_loopback_probe_reads_cts_and_dcd() -> None:
    rig = Rig()
    io = rig.io

    io.outb(MCR, uart.MCR_LOOP | 0x0A)       # RTS | OUT2 in loopback
    status = io.inb(MSR) & 0xF0
    io.outb(MCR, 0)

    assert status == 0x90                     # CTS | DCD, what autoconfig requires


def test_serial_autoconfig_fifo_probe_identifies_16550a() -> None:
    rig = Rig()
    io = rig.io

    io.outb(LCR, 0xBF)
    io.outb(EFR, 0)
    io.outb(LCR, 0)
    io.outb(FCR, uart.FCR_ENABLE)
    fifo_kind = io.inb(IIR) >> 6
    io.outb(LCR, 0x80)
    efr_v1 = io.inb(EFR)                      # 0 would mean an ST16C650V1
    io.outb(LCR, 0xBF)
    efr_v2 = io.inb(EFR)                      # 0 would mean an EFR-capable UART
    io.outb(LCR, 0)
    io.outb(FCR, uart.FCR_ENABLE | 0x20)      # 64-byte FIFO request: a TI16750 answers
    iir_64 = io.inb(IIR) & 0xE0
    io.outb(IER, 0x40)                        # XScale UUE bit
    uue = io.inb(IER) & 0x40

    assert fifo_kind == 3
    assert efr_v1 != 0 and efr_v2 != 0
    assert iir_64 == 0xC0
    assert uue == 0


def test_serial_scratch_register_keeps_value() -> None:
    rig = Rig()

    rig.io.outb(SCR, 0xA5)
    first = rig.io.inb(SCR)
    rig.io.outb(SCR, 0x5A)

    assert (first, rig.io.inb(SCR)) == (0xA5, 0x5A)


def test_serial_power_on_state_is_idle() -> None:
    rig = Rig()

    assert rig.io.inb(IIR) == uart.IIR_NO_INT
    assert rig.io.inb(LSR) == uart.LSR_THRE | uart.LSR_TEMT
    assert rig.io.inb(LCR) == 0 and rig.io.inb(MCR) == 0
    assert rig.irq.level is False


# --- transmit and the THRE interrupt ---

def test_serial_thr_write_sends_byte_to_sink() -> None:
    rig = Rig()

    for byte in b"hi\n":
        rig.io.outb(THR, byte)

    assert bytes(rig.output) == b"hi\n"
    assert rig.serial.stats()["tx_bytes"] == 3


def test_serial_quiet_port_without_sink_discards_output() -> None:
    rig = Rig(sink=False)

    rig.io.outb(THR, ord("x"))

    assert rig.io.inb(LSR) & uart.LSR_TEMT
    assert rig.serial.stats()["tx_bytes"] == 1


def test_serial_divisor_latch_write_does_not_transmit() -> None:
    rig = Rig()

    rig.io.outb(LCR, uart.LCR_DLAB)
    rig.io.outb(THR, 0x01)
    rig.io.outb(IER, 0x02)
    dll, dlm = rig.io.inb(RBR), rig.io.inb(IER)
    rig.io.outb(LCR, 0x03)

    assert (dll, dlm) == (0x01, 0x02)
    assert rig.output == b"" and rig.io.inb(IER) == 0


def test_serial_etbei_with_out2_raises_irq_and_iir_read_clears_it() -> None:
    rig = Rig()
    rig.startup(ier=0)

    rig.io.outb(IER, uart.IER_ETBEI)
    raised = rig.irq.level
    iir = rig.io.inb(IIR)

    assert raised is True
    assert iir == uart.IIR_FIFOS_ENABLED | uart.IIR_THR_EMPTY
    assert rig.irq.level is False
    assert rig.io.inb(IIR) == uart.IIR_FIFOS_ENABLED | uart.IIR_NO_INT


def test_serial_without_out2_reports_in_iir_but_keeps_line_low() -> None:
    rig = Rig()
    rig.io.outb(MCR, uart.MCR_DTR | uart.MCR_RTS)

    rig.io.outb(IER, uart.IER_ETBEI)

    assert rig.irq.level is False
    assert rig.io.inb(IIR) == uart.IIR_THR_EMPTY


def test_serial_setting_out2_later_raises_pending_interrupt() -> None:
    rig = Rig()
    rig.io.outb(IER, uart.IER_ETBEI)

    rig.io.outb(MCR, uart.MCR_OUT2)

    assert rig.irq.level is True


def test_serial_each_thr_write_gives_a_new_edge() -> None:
    rig = Rig()
    rig.startup(ier=uart.IER_ETBEI)
    rig.io.inb(IIR)                           # the handler takes the first THRE
    edges = rig.irq.edges

    for byte in b"abc":
        rig.io.outb(THR, byte)

    assert rig.irq.edges == edges + 3
    assert rig.irq.level is True


def test_serial_linux_thre_test_sees_reassertion() -> None:
    # serial8250_do_startup: a UART that does not re-raise THRE when ETBEI
    # goes 0 -> 1 is flagged UART_BUG_THRE and gets a polling timer.
    rig = Rig()
    rig.startup(ier=0)

    rig.io.outb(IER, uart.IER_ETBEI)
    iir1 = rig.io.inb(IIR)
    rig.io.outb(IER, 0)
    rig.io.outb(IER, uart.IER_ETBEI)
    iir = rig.io.inb(IIR)
    rig.io.outb(IER, 0)

    assert not iir1 & uart.IIR_NO_INT
    assert not iir & uart.IIR_NO_INT


def test_serial_linux_txen_test_sees_thre_interrupt() -> None:
    # serial8250_do_startup: TEMT with no interrupt after enabling THRI means UART_BUG_TXEN.
    rig = Rig()
    rig.startup(ier=0)

    rig.io.outb(IER, uart.IER_ETBEI)
    lsr = rig.io.inb(LSR)
    iir = rig.io.inb(IIR)

    assert lsr & uart.LSR_TEMT
    assert not iir & uart.IIR_NO_INT


# --- receive ---

def test_serial_input_sets_data_ready_and_raises_irq() -> None:
    rig = Rig()
    rig.startup(ier=uart.IER_ERBFI)

    rig.serial.enqueue_input(b"ls\r")

    assert rig.irq.level is True
    assert rig.io.inb(LSR) & uart.LSR_DR
    assert rig.drain() == b"ls\r"
    assert rig.irq.level is False


def test_serial_rx_below_trigger_reports_timeout_then_data_at_trigger() -> None:
    rig = Rig()
    rig.startup(ier=uart.IER_ERBFI)           # FIFO trigger level 8

    rig.serial.enqueue_input(b"abc")
    below = rig.io.inb(IIR)
    rig.serial.enqueue_input(b"defgh")
    at_trigger = rig.io.inb(IIR)

    assert below == uart.IIR_FIFOS_ENABLED | uart.IIR_RX_TIMEOUT
    assert at_trigger == uart.IIR_FIFOS_ENABLED | uart.IIR_RX_DATA


def test_serial_fifo_reset_drops_only_the_fifo_contents() -> None:
    rig = Rig()
    rig.startup(ier=0)
    rig.serial.enqueue_input(bytes(range(20)))

    rig.io.outb(FCR, uart.FCR_ENABLE | uart.FCR_CLEAR_RX)

    assert rig.drain() == bytes(range(16, 20))


def test_serial_fifo_disabled_holds_one_byte_and_iir_shows_no_fifo() -> None:
    rig = Rig()
    rig.io.outb(FCR, 0)
    rig.serial.enqueue_input(b"xy")

    iir = rig.io.inb(IIR)
    first = rig.io.inb(RBR)

    assert iir & uart.IIR_FIFOS_ENABLED == 0
    assert first == ord("x")
    assert rig.drain() == b"y"


def test_serial_input_beyond_limit_is_dropped_and_counted() -> None:
    rig = Rig(input_limit=20)
    rig.startup(ier=0)
    rig.serial.enqueue_input(bytes(16))       # fills the FIFO; the buffer is empty again

    rig.serial.enqueue_input(bytes(30))

    stats = rig.serial.stats()
    assert stats["rx_bytes"] == 36
    assert stats["rx_dropped"] == 10
    assert len(rig.drain()) == 36


def test_serial_break_then_key_reads_as_linux_sysrq_sequence() -> None:
    rig = Rig()
    rig.startup(ier=uart.IER_ERBFI | uart.IER_ELSI)

    rig.serial.send_break()
    rig.serial.enqueue_input(b"h")
    iir = rig.io.inb(IIR)
    lsr = rig.io.inb(LSR)
    brk = rig.io.inb(RBR)
    lsr2 = rig.io.inb(LSR)
    key = rig.io.inb(RBR)

    assert iir == uart.IIR_FIFOS_ENABLED | uart.IIR_LINE_STATUS
    assert lsr & (uart.LSR_BI | uart.LSR_DR) == uart.LSR_BI | uart.LSR_DR
    assert brk == 0
    assert lsr2 & uart.LSR_BI == 0 and lsr2 & uart.LSR_DR
    assert key == ord("h")
    assert rig.serial.stats()["breaks"] == 1


def test_serial_interrupt_priority_line_status_then_rx_then_thre() -> None:
    rig = Rig()
    rig.startup(ier=uart.IER_ERBFI | uart.IER_ETBEI | uart.IER_ELSI)
    rig.serial.send_break()

    first = rig.io.inb(IIR) & 0x0F
    rig.io.inb(LSR)                           # clears BI
    second = rig.io.inb(IIR) & 0x0F
    rig.io.inb(RBR)
    third = rig.io.inb(IIR) & 0x0F

    assert (first, second, third) == (uart.IIR_LINE_STATUS, uart.IIR_RX_TIMEOUT, uart.IIR_THR_EMPTY)


# --- loopback (MCR bit 4) ---

def test_serial_loopback_returns_output_to_receiver_not_sink() -> None:
    rig = Rig()
    rig.startup(ier=0)

    rig.io.outb(MCR, uart.MCR_LOOP | uart.MCR_OUT2)
    rig.io.outb(THR, 0x55)
    echoed = rig.drain()

    assert echoed == b"\x55"
    assert rig.output == b""


def test_serial_loopback_keeps_irq_low_and_holds_host_input() -> None:
    rig = Rig()
    rig.startup(ier=uart.IER_ERBFI)
    rig.io.outb(MCR, uart.MCR_LOOP | uart.MCR_OUT2)

    rig.serial.enqueue_input(b"k")
    during = (rig.irq.level, rig.io.inb(LSR) & uart.LSR_DR)
    rig.io.outb(MCR, uart.MCR_OUT2)

    assert during == (False, 0)
    assert rig.irq.level is True
    assert rig.drain() == b"k"


def test_serial_loopback_msr_follows_mcr_with_delta_bits() -> None:
    rig = Rig()
    rig.io.outb(MCR, uart.MCR_LOOP)
    rig.io.inb(MSR)                           # clear the deltas of entering loopback

    rig.io.outb(MCR, uart.MCR_LOOP | uart.MCR_DTR | uart.MCR_OUT1)
    raised = rig.io.inb(MSR)
    rig.io.outb(MCR, uart.MCR_LOOP | uart.MCR_DTR)
    ri_fell = rig.io.inb(MSR)

    assert raised == uart.MSR_DSR | uart.MSR_RI | uart.MSR_DDSR
    assert ri_fell == uart.MSR_DSR | uart.MSR_TERI


def test_serial_modem_status_interrupt_cleared_by_msr_read() -> None:
    rig = Rig()
    rig.io.outb(IER, uart.IER_EDSSI)
    rig.io.outb(MCR, uart.MCR_LOOP | uart.MCR_RTS)

    pending = rig.io.inb(IIR)
    rig.io.inb(MSR)

    assert pending == uart.IIR_MODEM_STATUS
    assert rig.io.inb(IIR) == uart.IIR_NO_INT


# --- robustness ---

def test_serial_garbage_from_guest_never_raises() -> None:
    rig = Rig()
    rig.serial.enqueue_input(b"some input")
    rng = random.Random(1234)

    for _ in range(5000):
        port = COM1 + rng.randrange(uart.REGISTER_COUNT)
        width = rng.choice((1, 2, 4))
        if rng.random() < 0.5:
            rig.io.bus.write(port, rng.randbytes(width))
        else:
            rig.io.bus.read(port, memoryview(bytearray(width)))

    assert rig.io.inb(LSR) & uart.LSR_THRE
    assert rig.irq.level == rig.serial._irq_level


def test_serial_wide_access_reaches_consecutive_registers() -> None:
    rig = Rig()

    rig.io.outw(LCR, 0x0B03)                  # LCR = 0x03, MCR = 0x0B

    assert rig.io.inb(LCR) == 0x03 and rig.io.inb(MCR) == 0x0B


def test_serial_input_from_another_thread_arrives_whole_and_in_order() -> None:
    rig = Rig()
    rig.startup(ier=uart.IER_ERBFI)
    payload = bytes(range(256)) * 8

    def feed() -> None:
        for i in range(0, len(payload), 64):
            rig.serial.enqueue_input(payload[i:i + 64])

    writer = threading.Thread(target=feed)
    writer.start()
    got = bytearray()
    while len(got) < len(payload):
        got += rig.drain()
    writer.join()

    assert bytes(got) == payload


def test_serial_reset_returns_registers_to_power_on_values() -> None:
    rig = Rig()
    rig.startup(ier=uart.IER_ETBEI)

    rig.serial.reset()

    assert (rig.io.inb(IER), rig.io.inb(MCR), rig.io.inb(LCR)) == (0, 0, 0)
    assert rig.irq.level is False


@pytest.mark.parametrize("trigger,level", [(0x00, 1), (0x40, 4), (0x80, 8), (0xC0, 14)])
def test_serial_fcr_trigger_bits_select_rx_data_threshold(trigger: int, level: int) -> None:
    rig = Rig()
    rig.io.outb(IER, uart.IER_ERBFI)
    rig.io.outb(FCR, uart.FCR_ENABLE | trigger)

    rig.serial.enqueue_input(bytes(level))

    assert rig.io.inb(IIR) & 0x0F == uart.IIR_RX_DATA
