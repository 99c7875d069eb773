"""A 16550A UART, the PC's COM ports (TI PC16550D datasheet, SLLS057).

The guest sees eight byte registers at ``base + 0..7`` (register one range of
:data:`REGISTER_COUNT` ports at ``layout.PORT_COM[n]``).  Transmission is
instant: a byte written to THR reaches ``sink`` at once, so THR and the
transmitter are always empty again by the time the guest looks (LSR.THRE and
LSR.TEMT read 1).  Reception is modelled as a wire with flow control: host
input waits in a bounded buffer and moves into the 16-byte RX FIFO (one byte
in 16450 mode) as the guest drains it, so nothing is ever overrun.

Interrupts (datasheet Table IV, highest priority first)::

    IIR  source                      cleared by
    06   receiver line status (BI)   reading LSR
    04   RX data >= trigger level    reading RBR below the trigger level
    0C   RX character time-out       reading RBR          (see _rx_interrupt_id)
    02   THR empty                   reading IIR (if it is the source) or writing THR
    00   modem status                reading MSR

On a PC the UART's INTR pin reaches the interrupt controller only through a
buffer enabled by MCR.OUT2, and Linux sets OUT2 for exactly that reason
(8250_port.c, serial8250_do_startup: "Most PC uarts need OUT2 raised to
enable interrupts").  In loopback mode the OUT2 pin is forced inactive
(datasheet, MCR bit 4), so the IRQ line stays low then too, while IIR still
reports the pending interrupts.

Threads and locks: vCPU threads call :meth:`read`/:meth:`write` under the
bus's per-device lock; the I/O thread calls :meth:`enqueue_input` and
:meth:`send_break`.  ``_lock`` guards the registers against both and is
taken inside the bus lock.  ``irq.set_level`` is called with ``_lock`` held
(so levels reach the line in order); ``sink`` is called after ``_lock`` is
released but still under the bus lock, which keeps output in order.

Snapshots (:mod:`kvmlite.base.state`): :meth:`Serial.save_state` keeps every
register, the divisor, the FIFO mode and trigger level, the pending line
status errors, the THRE interrupt latch, MSR (with its delta bits), the RX
FIFO and the host input still waiting on the wire.  ``sink``, the input
limit and the stats counters are host-side and not saved.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable

from kvmlite.base.state import Reader, StateError, pack_bytes
from kvmlite.devices.irq import IrqLine

log = logging.getLogger(__name__)

REGISTER_COUNT = 8

# Register offsets (PC16550D Table II).  DLAB = LCR bit 7 swaps 0/1 for the divisor.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_ERBFI = 0x01           # enable received data available interrupt
IER_ETBEI = 0x02           # enable THR empty interrupt
IER_ELSI = 0x04            # enable receiver line status interrupt
IER_EDSSI = 0x08           # enable modem status interrupt
IER_MASK = 0x0F            # bits 4-7 are always 0 on a 16550

IIR_NO_INT = 0x01
IIR_MODEM_STATUS = 0x00
IIR_THR_EMPTY = 0x02
IIR_RX_DATA = 0x04
IIR_LINE_STATUS = 0x06
IIR_RX_TIMEOUT = 0x0C
IIR_FIFOS_ENABLED = 0xC0   # bits 6-7: both set when FCR0 = 1 (what makes it a 16550A)

FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
FCR_TRIGGER_MASK = 0xC0
RX_TRIGGER_LEVELS = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F            # bits 5-7 are always 0 on a 16550

LSR_DR = 0x01              # data ready
LSR_OE = 0x02              # overrun error
LSR_PE = 0x04              # parity error
LSR_FE = 0x08              # framing error
LSR_BI = 0x10              # break interrupt
LSR_THRE = 0x20            # THR empty
LSR_TEMT = 0x40            # transmitter empty
LSR_RX_FIFO_ERROR = 0x80   # a PE/FE/BI character is in the FIFO
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_DELTAS = 0x0F
# Not in loopback, the modem inputs show a connected, ready terminal.
MSR_CONNECTED = MSR_DCD | MSR_DSR | MSR_CTS

FIFO_DEPTH = 16
DEFAULT_INPUT_LIMIT = 64 * 1024
BREAK = 0x100              # marks a break "character" (a 0 byte with BI) in the RX path
DEFAULT_DIVISOR = 12       # 9600 baud from the PC's 1.8432 MHz clock

Sink = Callable[[bytes], object]


class Serial:
    """One 16550A.  ``sink`` receives guest output (``None``: discarded, for
    the quiet COM2-4); ``irq`` is the ISA line (``layout.IRQ_COM[n]``)."""

    def __init__(self, irq: IrqLine, sink: Sink | None = None, *,
                 input_limit: int = DEFAULT_INPUT_LIMIT) -> None:
        self._irq = irq
        self._sink = sink
        self._input_limit = input_limit
        self._lock = threading.Lock()
        self._input: collections.deque[int] = collections.deque()  # host side of the wire
        self._rx: collections.deque[int] = collections.deque()     # the RX FIFO / RBR
        self._stats = dict.fromkeys(("tx_bytes", "rx_bytes", "rx_dropped", "breaks"), 0)
        self._irq_level = False
        self._reset_registers()

    def _reset_registers(self) -> None:
        """Master-reset values (datasheet Table VIII)."""
        self._ier = 0
        self._lcr = 0
        self._mcr = 0
        self._scr = 0
        self._divisor = DEFAULT_DIVISOR
        self._fifo_enabled = False
        self._rx_trigger = 1
        self._lsr_errors = 0
        self._thr_pending = False
        self._msr = MSR_CONNECTED
        self._rx.clear()

    # --- host side (any thread) ---

    def enqueue_input(self, data: bytes) -> None:
        """Bytes typed at the host, for the guest.  What does not fit in the
        input buffer is dropped and counted (``rx_dropped``)."""
        with self._lock:
            room = max(self._input_limit - len(self._input), 0)
            self._input.extend(data[:room])
            self._stats["rx_bytes"] += min(room, len(data))
            self._stats["rx_dropped"] += max(len(data) - room, 0)
            self._refill()
            self._update_irq()

    def send_break(self) -> None:
        """Hold the line in the break state for a character time: the guest
        reads a 0 byte with LSR.BI (and gets a line status interrupt if
        IER.ELSI).  Linux treats the next key within 5 s as a sysrq."""
        with self._lock:
            self._input.append(BREAK)
            self._stats["breaks"] += 1
            self._refill()
            self._update_irq()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def reset(self) -> None:
        """Power-on state (a guest reboot); pending host input is kept."""
        with self._lock:
            self._reset_registers()
            self._refill()
            self._update_irq()

    # --- snapshots ---

    def save_state(self) -> dict:
        with self._lock:
            return {"ier": self._ier, "lcr": self._lcr, "mcr": self._mcr, "scr": self._scr,
                    "divisor": self._divisor, "fifo_enabled": self._fifo_enabled,
                    "rx_trigger": self._rx_trigger, "lsr_errors": self._lsr_errors,
                    "thr_pending": self._thr_pending, "msr": self._msr,
                    "rx": _pack_chars(self._rx), "input": _pack_chars(self._input)}

    def restore_state(self, state: dict, part: str = "serial") -> None:
        """Load :meth:`save_state`'s dict into this (fresh) UART, then drive
        the IRQ line to the level the registers imply.  Checks everything
        before changing anything: a StateError leaves the UART as it was."""
        r = Reader(state, part)
        regs = _read_registers(r)
        rx = _unpack_chars(r, "rx")
        pending = _unpack_chars(r, "input")
        _check_consistent(r, regs, len(rx), pending, self._input_limit)
        with self._lock:
            for name, value in regs.items():
                setattr(self, "_" + name, value)
            self._rx = collections.deque(rx)
            self._input = collections.deque(pending)
            self._irq_level = self._level()
            self._irq.set_level(self._irq_level)   # a fresh line: drive it either way

    # --- BusDevice (vCPU threads) ---

    def read(self, offset: int, data: memoryview) -> None:
        with self._lock:
            for i in range(len(data)):
                data[i] = self._read_register(offset + i)
            self._update_irq()

    def write(self, offset: int, data: bytes) -> None:
        out = bytearray()
        with self._lock:
            for i, value in enumerate(data):
                self._write_register(offset + i, value, out)
        if out and self._sink is not None:
            self._sink(bytes(out))

    # --- registers ---

    def _read_register(self, reg: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if reg == RBR:
            return self._divisor & 0xFF if dlab else self._read_rbr()
        if reg == IER:
            return self._divisor >> 8 if dlab else self._ier
        if reg == IIR:
            return self._read_iir()
        if reg == LCR:
            return self._lcr
        if reg == MCR:
            return self._mcr
        if reg == LSR:
            return self._read_lsr()
        if reg == MSR:
            return self._read_msr()
        if reg == SCR:
            return self._scr
        return 0xFF

    def _write_register(self, reg: int, value: int, out: bytearray) -> None:
        dlab = self._lcr & LCR_DLAB
        if reg == THR and dlab:
            self._divisor = (self._divisor & 0xFF00) | value
        elif reg == THR:
            self._write_thr(value, out)
        elif reg == IER and dlab:
            self._divisor = (self._divisor & 0x00FF) | value << 8
        elif reg == IER:
            self._write_ier(value)
        elif reg == FCR:
            self._write_fcr(value)
        elif reg == LCR:
            self._lcr = value       # bit 6 (set break) has no receiver to reach
        elif reg == MCR:
            self._write_mcr(value)
        elif reg == SCR:
            self._scr = value
        # LSR and MSR are read-only (writes are for factory test); others: no register.
        self._update_irq()

    def _read_rbr(self) -> int:
        if not self._rx:
            return 0
        value = self._rx.popleft() & 0xFF
        self._on_new_head()
        self._refill()
        return value

    def _write_thr(self, value: int, out: bytearray) -> None:
        # Writing THR clears a THRE interrupt; the byte then leaves at once
        # and THR is empty again, which raises it anew: a fresh edge per byte.
        self._thr_pending = False
        self._update_irq()
        if self._mcr & MCR_LOOP:
            self._loop_back(value)
        else:
            out.append(value)
            self._stats["tx_bytes"] += 1
        self._thr_pending = True

    def _loop_back(self, value: int) -> None:
        """Loopback: the transmitter output feeds the receiver (datasheet, MCR bit 4)."""
        if len(self._rx) >= self._rx_capacity():
            self._lsr_errors |= LSR_OE
            return
        self._rx.append(value)
        if len(self._rx) == 1:
            self._on_new_head()

    def _write_ier(self, value: int) -> None:
        # A 0->1 ETBEI while THR is empty raises THRE again even if an IIR read
        # had cleared it.  Not in the datasheet, but what real parts do and
        # Linux checks at startup (serial8250_do_startup's UART_BUG_THRE test).
        rising = value & ~self._ier & IER_ETBEI
        self._ier = value & IER_MASK
        if rising:
            self._thr_pending = True

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE)
        if enable != self._fifo_enabled:
            self._clear_rx()        # changing FCR0 clears both FIFOs
        self._fifo_enabled = enable
        if not enable:
            return                  # the other bits are only programmed with FCR0 = 1
        if value & FCR_CLEAR_RX:
            self._clear_rx()
        self._rx_trigger = RX_TRIGGER_LEVELS[value & FCR_TRIGGER_MASK]
        self._refill()

    def _write_mcr(self, value: int) -> None:
        old_lines = self._modem_inputs()
        self._mcr = value & MCR_MASK
        self._note_modem_change(old_lines, self._modem_inputs())
        self._refill()              # leaving loopback reconnects the wire

    def _read_iir(self) -> int:
        iid = self._pending_interrupt()
        if iid == IIR_THR_EMPTY:
            self._thr_pending = False
        return iid | (IIR_FIFOS_ENABLED if self._fifo_enabled else 0)

    def _read_lsr(self) -> int:
        value = self._lsr_errors | LSR_THRE | LSR_TEMT
        if self._rx:
            value |= LSR_DR
        if self._fifo_enabled and any(c & BREAK for c in self._rx):
            value |= LSR_RX_FIFO_ERROR
        self._lsr_errors = 0        # OE, PE, FE and BI are reset by reading LSR
        return value

    def _read_msr(self) -> int:
        value = self._msr
        self._msr &= ~MSR_DELTAS
        return value

    # --- modem lines ---

    def _modem_inputs(self) -> int:
        """CTS, DSR, RI, DCD (MSR bits 4-7).  In loopback they are RTS, DTR,
        OUT1, OUT2 (datasheet, MCR bit 4); otherwise a connected terminal."""
        return _modem_inputs(self._mcr)

    def _note_modem_change(self, old: int, new: int) -> None:
        changed = old ^ new
        deltas = ((MSR_DCTS if changed & MSR_CTS else 0) | (MSR_DDSR if changed & MSR_DSR else 0)
                  | (MSR_DDCD if changed & MSR_DCD else 0)
                  | (MSR_TERI if old & MSR_RI and not new & MSR_RI else 0))  # RI trailing edge
        self._msr = (self._msr & MSR_DELTAS) | deltas | new

    # --- receive path ---

    def _rx_capacity(self) -> int:
        return FIFO_DEPTH if self._fifo_enabled else 1

    def _refill(self) -> None:
        """Move waiting host input onto the (connected) wire and into the FIFO."""
        if self._mcr & MCR_LOOP:
            return
        capacity = self._rx_capacity()
        was_empty = not self._rx
        while self._input and len(self._rx) < capacity:
            self._rx.append(self._input.popleft())
        if was_empty and self._rx:
            self._on_new_head()

    def _clear_rx(self) -> None:
        self._rx.clear()
        self._lsr_errors &= ~LSR_BI

    def _on_new_head(self) -> None:
        """A break is reported (LSR.BI) when its character reaches the top
        of the FIFO (datasheet, LSR bit 4 in FIFO mode)."""
        if self._rx and self._rx[0] & BREAK:
            self._lsr_errors |= LSR_BI

    # --- interrupts ---

    def _pending_interrupt(self) -> int:
        """The IIR identification of the highest-priority pending interrupt."""
        ier = self._ier
        if ier & IER_ELSI and self._lsr_errors & LSR_ERRORS:
            return IIR_LINE_STATUS
        if ier & IER_ERBFI and self._rx:
            return self._rx_interrupt_id()
        if ier & IER_ETBEI and self._thr_pending:
            return IIR_THR_EMPTY
        if ier & IER_EDSSI and self._msr & MSR_DELTAS:
            return IIR_MODEM_STATUS
        return IIR_NO_INT

    def _rx_interrupt_id(self) -> int:
        # Below the trigger level a real FIFO reports a time-out after four
        # idle character times.  The wire here is idle as soon as the host
        # has nothing more, so that time has always passed: report it now.
        if self._fifo_enabled and len(self._rx) < self._rx_trigger:
            return IIR_RX_TIMEOUT
        return IIR_RX_DATA

    def _level(self) -> bool:
        gate = self._mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2
        return bool(gate) and self._pending_interrupt() != IIR_NO_INT

    def _update_irq(self) -> None:
        level = self._level()
        if level != self._irq_level:
            self._irq_level = level
            self._irq.set_level(level)


def _modem_inputs(mcr: int) -> int:
    """MSR bits 4-7 for MCR ``mcr`` (see :meth:`Serial._modem_inputs`)."""
    if not mcr & MCR_LOOP:
        return MSR_CONNECTED
    return ((MSR_CTS if mcr & MCR_RTS else 0) | (MSR_DSR if mcr & MCR_DTR else 0)
            | (MSR_RI if mcr & MCR_OUT1 else 0) | (MSR_DCD if mcr & MCR_OUT2 else 0))


# --- snapshot helpers ---

def _pack_chars(chars: collections.deque[int]) -> dict:
    """RX characters as bytes plus the positions of breaks (``BREAK``)."""
    return {"bytes": pack_bytes(bytes(c & 0xFF for c in chars)),
            "breaks": [i for i, c in enumerate(chars) if c & BREAK]}


def _unpack_chars(r: Reader, key: str) -> list[int]:
    sub = r.sub(key)
    chars = list(sub.bytes("bytes"))
    for i in sub.ints("breaks", high=max(len(chars) - 1, 0)):
        if i >= len(chars) or chars[i]:
            raise StateError(f"{sub.part}: break at {i} is not a 0 character")
        chars[i] = BREAK
    return chars


def _read_registers(r: Reader) -> dict[str, int | bool]:
    """The register fields of a saved UART, range-checked."""
    regs: dict[str, int | bool] = {
        "ier": r.int("ier", 0, IER_MASK), "lcr": r.int("lcr", 0, 0xFF),
        "mcr": r.int("mcr", 0, MCR_MASK), "scr": r.int("scr", 0, 0xFF),
        "divisor": r.int("divisor", 0, 0xFFFF), "fifo_enabled": r.bool("fifo_enabled"),
        "rx_trigger": r.int("rx_trigger", 1, FIFO_DEPTH), "lsr_errors": r.int("lsr_errors", 0, 0xFF),
        "thr_pending": r.bool("thr_pending"), "msr": r.int("msr", 0, 0xFF)}
    if regs["rx_trigger"] not in RX_TRIGGER_LEVELS.values():
        raise StateError(f"{r.part}: rx_trigger={regs['rx_trigger']} is not a 16550 trigger level")
    if int(regs["lsr_errors"]) & ~LSR_ERRORS:
        raise StateError(f"{r.part}: lsr_errors={regs['lsr_errors']:#x} has bits other than OE/PE/FE/BI")
    return regs


def _check_consistent(r: Reader, regs: dict[str, int | bool], rx: int, pending: list[int],
                      input_limit: int) -> None:
    """What the registers say must agree with the FIFO and the modem lines."""
    capacity = FIFO_DEPTH if regs["fifo_enabled"] else 1
    if rx > capacity:
        raise StateError(f"{r.part}: rx holds {rx} characters, the FIFO {capacity}")
    data = sum(1 for c in pending if not c & BREAK)   # send_break queues past the limit
    if data > input_limit:
        raise StateError(f"{r.part}: input holds {data} bytes, more than the limit {input_limit}")
    mcr = int(regs["mcr"])
    if int(regs["msr"]) & ~MSR_DELTAS != _modem_inputs(mcr):
        raise StateError(f"{r.part}: msr={regs['msr']:#x} disagrees with mcr={mcr:#x}")
