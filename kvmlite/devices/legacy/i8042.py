"""The PC keyboard controller (Intel 8042 / PS/2 "KBC") at ports 0x60/0x64.

Two one-byte ports, each its own bus device (register ``I8042.data`` at
``layout.PORT_I8042_DATA`` and ``I8042.command`` at
``layout.PORT_I8042_STATUS``, length 1 each)::

    0x60 read   output buffer: keyboard/aux data or a controller reply
    0x60 write  to the keyboard, or the argument of a controller command
    0x64 read   status register
    0x64 write  controller command

Behind the first port sits an :class:`~kvmlite.devices.legacy.atkbd.AtKeyboard`.
The second (aux) port exists but nothing is plugged in: bytes sent to it with
D4 come back as a time-out (0xFE with status TIMEOUT|AUXB), so a mouse probe
fails at once.  The controller's own aux loop-back (D3) works, and raises
IRQ 12 when an ``aux_irq`` is given: Linux's legacy probe (i8042_check_aux)
tests that delivery and otherwise waits 250 ms before deciding there is no
aux port.  With the DSDT's PNP0303 and no PS/2 mouse, Linux skips aux
altogether ("PS/2 appears to have AUX port disabled").

Interrupts: IRQ 1 is high while the output buffer holds a non-aux byte and
the command byte's KBDINT bit is set (IRQ 12 likewise for aux bytes and
AUXINT).  Reading 0x60 drops the line before the next byte is loaded, so
every byte is a new edge for the edge-triggered ISA input.

Threads and locks: vCPU threads reach :attr:`data`/:attr:`command` under the
bus's lock for each; the I/O or control thread calls :meth:`send_scancodes`.
``_lock`` guards all state and is taken inside the bus locks.  The reset
callback and the IRQ lines are called with ``_lock`` held: ``reset`` must
only request the reset, not wait for it.

Snapshots: :meth:`I8042.save_state` keeps the controller RAM (the command
byte is byte 0), the output port, the output buffer and the controller's
queued replies (with their aux/time-out flags), a command waiting for its
argument, the A2 flag, the last byte read, the translator's half-seen
``F0``, and the keyboard's own state (``keyboard``).  The stats and the
reset callback are host-side.  Restoring drives IRQ 1 and IRQ 12 to the
levels the output buffer and command byte imply.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, NamedTuple

from kvmlite.base.state import Reader, StateError, pack_bytes
from kvmlite.devices.irq import IrqLine
from kvmlite.devices.legacy.atkbd import MAX_SAVED_OUTPUT, AtKeyboard
from kvmlite.devices.legacy.ports import PortView, fill
from kvmlite.devices.legacy.scancodes import CTRL_ALT_DEL, Translator

log = logging.getLogger(__name__)

# Status register (port 0x64 read)
STS_OBF = 0x01             # output buffer full
STS_IBF = 0x02             # input buffer full (never: commands complete at once)
STS_SYS = 0x04             # system flag: mirrors command byte bit 2
STS_A2 = 0x08              # last write was a command (0x64), not data
STS_UNLOCKED = 0x10        # keyboard not inhibited by the key lock
STS_AUXB = 0x20            # the output buffer holds aux data
STS_TIMEOUT = 0x40

# Command byte (controller RAM byte 0)
CTR_KBDINT = 0x01
CTR_AUXINT = 0x02
CTR_SYS = 0x04
CTR_KBDDIS = 0x10
CTR_AUXDIS = 0x20
CTR_XLAT = 0x40
# What a PC BIOS leaves after POST: keyboard IRQ on, translation on,
# self-test passed, aux port disabled.
CTR_AFTER_POST = CTR_XLAT | CTR_AUXDIS | CTR_SYS | CTR_KBDINT

# Controller commands (port 0x64 write)
CMD_READ_RAM = 0x20        # 0x20-0x3F: read RAM byte n (0 = command byte)
CMD_WRITE_RAM = 0x60       # 0x60-0x7F: write RAM byte n
CMD_AUX_DISABLE = 0xA7
CMD_AUX_ENABLE = 0xA8
CMD_AUX_TEST = 0xA9
CMD_SELF_TEST = 0xAA
CMD_KBD_TEST = 0xAB
CMD_KBD_DISABLE = 0xAD
CMD_KBD_ENABLE = 0xAE
CMD_READ_OUTPUT_PORT = 0xD0
CMD_WRITE_OUTPUT_PORT = 0xD1
CMD_WRITE_KBD_BUFFER = 0xD2  # loop a byte back as if from the keyboard
CMD_WRITE_AUX_BUFFER = 0xD3  # loop a byte back as if from the aux device
CMD_WRITE_AUX = 0xD4         # send a byte to the aux device
CMD_PULSE_FIRST = 0xF0       # F0-FF: pulse output port bits 0-3 low where clear

SELF_TEST_OK = 0x55
INTERFACE_TEST_OK = 0x00
AUX_NO_DEVICE = 0xFE

OUTPUT_PORT_RESET = 0x01     # output port bit 0: CPU reset line (active low)
OUTPUT_PORT_A20 = 0x02
RAM_SIZE = 32
_ARGUMENT_COMMANDS = frozenset({*range(CMD_WRITE_RAM, CMD_WRITE_RAM + RAM_SIZE), CMD_WRITE_OUTPUT_PORT,
                                CMD_WRITE_KBD_BUFFER, CMD_WRITE_AUX_BUFFER, CMD_WRITE_AUX})


class _Byte(NamedTuple):
    value: int
    aux: bool = False
    timeout: bool = False


class I8042:
    """The controller.  ``reset`` is called when the guest pulls the CPU
    reset line (command 0xFE, the usual way to reboot a PC)."""

    def __init__(self, kbd_irq: IrqLine, *, reset: Callable[[], None],
                 aux_irq: IrqLine | None = None) -> None:
        self._kbd_irq = kbd_irq
        self._aux_irq = aux_irq
        self._reset = reset
        self._lock = threading.Lock()
        self.keyboard = AtKeyboard()
        self._translator = Translator()
        self._replies: collections.deque[_Byte] = collections.deque()  # controller-made bytes
        self._out: _Byte | None = None          # the output buffer
        self._last_read = 0
        self._ram = bytearray(RAM_SIZE)
        self._ram[0] = CTR_AFTER_POST
        self._output_port = OUTPUT_PORT_RESET | OUTPUT_PORT_A20
        self._awaiting: int | None = None       # command whose argument comes next
        self._a2 = False
        self._levels = [False, False]           # IRQ 1, IRQ 12 as last driven
        self._stats = dict.fromkeys(("keys_sent", "keys_dropped", "resets"), 0)
        self.data = PortView("i8042-data", 1, self._read_data, self._write_data)
        self.command = PortView("i8042-command", 1, self._read_status, self._write_command)

    # --- host side (any thread) ---

    def send_scancodes(self, codes: bytes) -> bool:
        """Key codes as the keyboard sends them, in its current scan code set
        (set 2 unless the guest changed it); the controller translates them
        when XLAT is on.  False (and counted) if they were dropped: scanning
        disabled or the keyboard's buffer full."""
        with self._lock:
            accepted = self.keyboard.type(codes)
            self._stats["keys_sent" if accepted else "keys_dropped"] += len(codes)
            self._service()
            return accepted

    def send_ctrl_alt_del(self) -> bool:
        """Press and release Ctrl+Alt+Delete (Linux: ctrl_alt_del(), which
        init turns into a reboot or shutdown)."""
        with self._lock:
            codes = CTRL_ALT_DEL.get(self.keyboard.scancode_set, CTRL_ALT_DEL[2])
        return self.send_scancodes(codes)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    @property
    def command_byte(self) -> int:
        return self._ram[0]

    # --- snapshots ---

    def save_state(self) -> dict:
        with self._lock:
            return {"ram": pack_bytes(self._ram), "output_port": self._output_port,
                    "awaiting": self._awaiting, "a2": self._a2, "last_read": self._last_read,
                    "out": None if self._out is None else list(self._out),
                    "replies": [list(b) for b in self._replies],
                    "xlat_release": self._translator.release_pending,
                    "keyboard": self.keyboard.save_state()}

    def restore_state(self, state: dict, part: str = "i8042") -> None:
        """Load :meth:`save_state`'s dict and drive the IRQ lines; a StateError
        (naming the field) leaves the controller and keyboard unchanged."""
        r = Reader(state, part)
        ram, output_port = bytearray(r.bytes("ram", RAM_SIZE)), r.int("output_port", 0, 0xFF)
        if not output_port & OUTPUT_PORT_A20:
            raise StateError(f"{part}: output_port={output_port:#04x} has A20 off (always on under KVM)")
        awaiting = _read_awaiting(r)
        a2, last_read, release = r.bool("a2"), r.int("last_read", 0, 0xFF), r.bool("xlat_release")
        out = None if r.state.get("out", 0) is None else _read_byte(r, r.list("out"), "out")
        replies = [_read_byte(r, b, f"replies[{i}]") for i, b in enumerate(r.list("replies"))]
        if len(replies) > MAX_SAVED_OUTPUT:
            raise StateError(f"{part}: {len(replies)} replies queued, more than {MAX_SAVED_OUTPUT}")
        with self._lock:
            # may raise; it checks all before loading, and nothing else is set yet
            self.keyboard.restore_state(r.sub("keyboard").state, f"{part} keyboard")
            self._ram, self._output_port, self._awaiting = ram, output_port, awaiting
            self._a2, self._last_read, self._translator.release_pending = a2, last_read, release
            self._out, self._replies = out, collections.deque(replies)
            self._levels = [False, False]
            self._drive_irqs()

    # --- port 0x60 ---

    def _read_data(self, offset: int, data: memoryview) -> None:
        with self._lock:
            if self._out is not None:
                self._last_read = self._out.value
                self._out = None
                self._update_irqs()     # the line drops before the next byte loads
                self._service()
            fill(data, self._last_read)  # an empty buffer reads the last byte again

    def _write_data(self, offset: int, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            self._a2 = False
            awaiting, self._awaiting = self._awaiting, None
            if awaiting is None:
                # Writing to the keyboard re-enables its interface (as the
                # 8042 firmware does: the clock line must run to send).
                self._ram[0] &= ~CTR_KBDDIS
                self.keyboard.receive(data[0])
            else:
                self._argument(awaiting, data[0])
            self._service()

    # --- port 0x64 ---

    def _read_status(self, offset: int, data: memoryview) -> None:
        with self._lock:
            status = STS_UNLOCKED | (self._ram[0] & CTR_SYS)
            if self._a2:
                status |= STS_A2
            if self._out is not None:
                status |= STS_OBF
                status |= STS_AUXB if self._out.aux else 0
                status |= STS_TIMEOUT if self._out.timeout else 0
            fill(data, status)

    def _write_command(self, offset: int, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            self._a2 = True
            self._awaiting = None
            self._command(data[0])
            self._service()

    # --- controller commands ---

    def _command(self, cmd: int) -> None:
        if CMD_READ_RAM <= cmd < CMD_READ_RAM + RAM_SIZE:
            self._reply(self._ram[cmd - CMD_READ_RAM])
        elif CMD_WRITE_RAM <= cmd < CMD_WRITE_RAM + RAM_SIZE or cmd in (
                CMD_WRITE_OUTPUT_PORT, CMD_WRITE_KBD_BUFFER, CMD_WRITE_AUX_BUFFER, CMD_WRITE_AUX):
            self._awaiting = cmd
        elif cmd in (CMD_AUX_DISABLE, CMD_AUX_ENABLE, CMD_KBD_DISABLE, CMD_KBD_ENABLE):
            self._toggle_port(cmd)
        elif cmd == CMD_SELF_TEST:
            self._ram[0] |= CTR_SYS
            self._reply(SELF_TEST_OK)
        elif cmd in (CMD_KBD_TEST, CMD_AUX_TEST):
            self._reply(INTERFACE_TEST_OK)   # the lines are fine, plugged in or not
        elif cmd == CMD_READ_OUTPUT_PORT:
            self._reply(self._output_port)
        elif cmd >= CMD_PULSE_FIRST:
            if not cmd & OUTPUT_PORT_RESET:
                self._request_reset("pulse %#04x" % cmd)
        else:
            log.debug("i8042: unknown controller command %#04x", cmd)

    def _toggle_port(self, cmd: int) -> None:
        bit = CTR_AUXDIS if cmd in (CMD_AUX_DISABLE, CMD_AUX_ENABLE) else CTR_KBDDIS
        if cmd in (CMD_AUX_DISABLE, CMD_KBD_DISABLE):
            self._ram[0] |= bit
        else:
            self._ram[0] &= ~bit

    def _argument(self, cmd: int, value: int) -> None:
        if CMD_WRITE_RAM <= cmd < CMD_WRITE_RAM + RAM_SIZE:
            self._ram[cmd - CMD_WRITE_RAM] = value & 0x7F if cmd == CMD_WRITE_RAM else value
        elif cmd == CMD_WRITE_OUTPUT_PORT:
            self._output_port = value | OUTPUT_PORT_A20   # A20 is always on under KVM
            if not value & OUTPUT_PORT_RESET:
                self._request_reset("output port %#04x" % value)
        elif cmd == CMD_WRITE_KBD_BUFFER:
            self._reply(value)
        elif cmd == CMD_WRITE_AUX_BUFFER:
            self._reply(value, aux=True)
        elif cmd == CMD_WRITE_AUX:
            self._ram[0] &= ~CTR_AUXDIS
            self._reply(AUX_NO_DEVICE, aux=True, timeout=True)

    def _request_reset(self, why: str) -> None:
        log.info("i8042: guest requested a CPU reset (%s)", why)
        self._stats["resets"] += 1
        self._reset()

    def _reply(self, value: int, aux: bool = False, timeout: bool = False) -> None:
        self._replies.append(_Byte(value, aux, timeout))

    # --- output buffer and interrupts ---

    def _service(self) -> None:
        """Load the output buffer if it is free, then drive the IRQ lines."""
        if self._out is None:
            self._out = self._next_byte()
        self._update_irqs()

    def _next_byte(self) -> _Byte | None:
        if self._replies:
            return self._replies.popleft()
        if self._ram[0] & CTR_KBDDIS:
            return None                       # the keyboard holds its bytes
        while self.keyboard.has_output():
            value = self.keyboard.pop()
            if not self._ram[0] & CTR_XLAT:
                return _Byte(value)
            translated = self._translator.feed(value)
            if translated is not None:
                return _Byte(translated)
        return None

    def _wanted_levels(self) -> tuple[bool, bool]:
        out, ctr = self._out, self._ram[0]
        kbd = out is not None and not out.aux and bool(ctr & CTR_KBDINT)
        aux = out is not None and out.aux and bool(ctr & CTR_AUXINT)
        return kbd, aux

    def _update_irqs(self) -> None:
        for i, (line, level) in enumerate(zip((self._kbd_irq, self._aux_irq), self._wanted_levels())):
            if line is not None and level != self._levels[i]:
                self._levels[i] = level
                line.set_level(level)

    def _drive_irqs(self) -> None:
        """Set both lines to their levels whatever was driven before (a restore)."""
        for i, (line, level) in enumerate(zip((self._kbd_irq, self._aux_irq), self._wanted_levels())):
            self._levels[i] = level
            if line is not None:
                line.set_level(level)


def _read_awaiting(r: Reader) -> int | None:
    """A controller command that waits for its argument byte, or None."""
    awaiting = r.int_or_none("awaiting", 0, 0xFF)
    if awaiting is not None and awaiting not in _ARGUMENT_COMMANDS:
        raise StateError(f"{r.part}: awaiting={awaiting:#04x} is not a command that takes an argument")
    return awaiting


def _read_byte(r: Reader, item: object, what: str) -> _Byte:
    """An output byte saved as [value, aux, timeout]."""
    if (not isinstance(item, list) or len(item) != 3 or isinstance(item[0], bool)
            or not isinstance(item[0], int) or not 0 <= item[0] <= 0xFF
            or not all(isinstance(flag, bool) for flag in item[1:])):
        raise StateError(f"{r.part}: {what}={item!r} is not [byte, aux, timeout]")
    return _Byte(item[0], item[1], item[2])
