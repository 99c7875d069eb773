"""The AT (MF2) keyboard behind the i8042's first port.

It answers the host-to-keyboard commands Linux's atkbd driver uses to probe
and bind (drivers/input/keyboard/atkbd.c: GETID, SETLEDS, SETREP, enable,
reset-and-disable) plus the rest of the standard set, and queues key codes
given to :meth:`AtKeyboard.type` while scanning is enabled.  It emits bytes
in its current scan code set; translation to set 1 is the controller's job
(:mod:`kvmlite.devices.legacy.scancodes`).

Not thread-safe by itself: :class:`~kvmlite.devices.legacy.i8042.I8042`
calls it with its lock held.

Snapshots: :meth:`AtKeyboard.save_state` keeps the bytes queued for the
controller, a command waiting for its argument, the last byte sent (for
RESEND), the scan code set, scanning, LEDs and typematic setting; the
controller (``I8042``) saves it inside its own state.
"""

from __future__ import annotations

import collections
import logging

from kvmlite.base.state import Reader, StateError, pack_bytes

log = logging.getLogger(__name__)

# Keyboard commands (IBM PS/2 technical reference, keyboard command set)
CMD_SET_LEDS = 0xED
CMD_ECHO = 0xEE
CMD_SCANCODE_SET = 0xF0
CMD_GET_ID = 0xF2
CMD_SET_TYPEMATIC = 0xF3
CMD_ENABLE = 0xF4
CMD_DISABLE = 0xF5         # reset to defaults, stop scanning
CMD_SET_DEFAULTS = 0xF6    # reset to defaults, keep scanning
CMD_SET3_ALL_FIRST = 0xF7  # F7-FA: set-3 key types for all keys
CMD_SET3_ALL_LAST = 0xFA
CMD_SET3_KEY_FIRST = 0xFB  # FB-FD: set-3 key type for one key (argument)
CMD_SET3_KEY_LAST = 0xFD
CMD_RESEND = 0xFE
CMD_RESET = 0xFF

# Keyboard replies
REPLY_ACK = 0xFA
REPLY_RESEND = 0xFE
REPLY_BAT_OK = 0xAA        # basic assurance test passed (after reset)
ID_MF2 = bytes([0xAB, 0x83])

DEFAULT_SET = 2
# Linux's i8042_flush() reads at most 16 bytes (I8042_BUFFER_SIZE) and takes
# more as "no controller"; 15 here plus the controller's output buffer keep
# to that even when keys were queued before the driver ran.
BUFFER_SIZE = 15
REPLY_ROOM = 3             # the longest reply (ACK + 2 ID bytes) always fits
MAX_SAVED_OUTPUT = 4096    # sanity bound on a restored queue (RESEND may grow it past the buffer)

_ARGUMENT_COMMANDS = frozenset({CMD_SET_LEDS, CMD_SCANCODE_SET, CMD_SET_TYPEMATIC,
                                *range(CMD_SET3_KEY_FIRST, CMD_SET3_KEY_LAST + 1)})


class AtKeyboard:
    def __init__(self, buffer_size: int = BUFFER_SIZE) -> None:
        self._buffer_size = buffer_size
        self._out: collections.deque[int] = collections.deque()
        self._awaiting: int | None = None     # command whose argument comes next
        self._last_sent = REPLY_BAT_OK
        self.scancode_set = DEFAULT_SET
        self.scanning = True
        self.leds = 0
        self.typematic = 0x2B                  # 10.9 cps, 500 ms (the default)

    # --- controller side ---

    def has_output(self) -> bool:
        return bool(self._out)

    def pop(self) -> int:
        """The next byte the keyboard sends to the controller."""
        self._last_sent = self._out.popleft()
        return self._last_sent

    def type(self, codes: bytes) -> bool:
        """Queue key codes (already in the current scan code set) as if keys
        were pressed.  All or nothing: False when scanning is off or the
        buffer would overflow, so a key is never left half-pressed."""
        if not self.scanning or len(self._out) + len(codes) > self._buffer_size:
            return False
        self._out.extend(codes)
        return True

    def receive(self, byte: int) -> None:
        """A byte from the host (written to port 0x60)."""
        awaiting, self._awaiting = self._awaiting, None
        if awaiting is not None and self._argument(awaiting, byte):
            return
        self._command(byte)

    # --- snapshots ---

    def save_state(self) -> dict:
        return {"out": pack_bytes(bytes(self._out)), "awaiting": self._awaiting,
                "last_sent": self._last_sent, "scancode_set": self.scancode_set,
                "scanning": self.scanning, "leds": self.leds, "typematic": self.typematic}

    def restore_state(self, state: dict, part: str = "atkbd") -> None:
        """Load :meth:`save_state`'s dict; checks all of it before changing anything."""
        r = Reader(state, part)
        out = r.bytes("out")
        if len(out) > MAX_SAVED_OUTPUT:
            raise StateError(f"{part}: out holds {len(out)} bytes, more than {MAX_SAVED_OUTPUT}")
        awaiting = _read_awaiting(r)
        last_sent, scancode_set = r.int("last_sent", 0, 0xFF), r.int("scancode_set", 1, 3)
        scanning, leds, typematic = r.bool("scanning"), r.int("leds", 0, 0x07), r.int("typematic", 0, 0x7F)
        self._out = collections.deque(out)
        self._awaiting, self._last_sent = awaiting, last_sent
        self.scancode_set, self.scanning, self.leds, self.typematic = scancode_set, scanning, leds, typematic

    # --- commands ---

    def _command(self, cmd: int) -> None:
        if cmd in _ARGUMENT_COMMANDS:
            self._awaiting = cmd
            self._reply(REPLY_ACK)
        elif cmd == CMD_ECHO:
            self._reply(CMD_ECHO)
        elif cmd == CMD_GET_ID:
            self._reply(REPLY_ACK, *ID_MF2)
        elif cmd == CMD_ENABLE:
            self._out.clear()
            self.scanning = True
            self._reply(REPLY_ACK)
        elif cmd in (CMD_DISABLE, CMD_SET_DEFAULTS):
            self._set_defaults()
            self.scanning = cmd == CMD_SET_DEFAULTS
            self._reply(REPLY_ACK)
        elif CMD_SET3_ALL_FIRST <= cmd <= CMD_SET3_ALL_LAST:
            self._reply(REPLY_ACK)
        elif cmd == CMD_RESEND:
            self._out.append(self._last_sent)
        elif cmd == CMD_RESET:
            self._set_defaults()
            self.scanning = True
            self._reply(REPLY_ACK, REPLY_BAT_OK)
        else:
            log.debug("atkbd: unknown command %#04x", cmd)
            self._reply(REPLY_RESEND)

    def _argument(self, cmd: int, arg: int) -> bool:
        """Handle the argument of ``cmd``; False if ``arg`` is not a valid
        argument (a command byte then starts a new command, as on a real
        keyboard)."""
        if cmd == CMD_SET_LEDS and arg <= 0x07:
            self.leds = arg
        elif cmd == CMD_SET_TYPEMATIC and arg <= 0x7F:
            self.typematic = arg
        elif cmd == CMD_SCANCODE_SET and arg == 0:
            self._reply(REPLY_ACK, self.scancode_set)
            return True
        elif cmd == CMD_SCANCODE_SET and arg in (1, 2, 3):
            self.scancode_set = arg
        elif CMD_SET3_KEY_FIRST <= cmd <= CMD_SET3_KEY_LAST and arg < CMD_SET_LEDS:
            pass                                # per-key type in set 3: accepted, not modelled
        elif arg >= CMD_SET_LEDS:
            return False
        else:
            self._reply(REPLY_RESEND)
            return True
        self._reply(REPLY_ACK)
        return True

    def _set_defaults(self) -> None:
        self._out.clear()
        self._awaiting = None
        self.scancode_set = DEFAULT_SET
        self.leds = 0
        self.typematic = 0x2B

    def _reply(self, *data: int) -> None:
        # Replies go out even when the buffer is full of keys (the host waits
        # for them), but a host that never reads cannot grow it without end.
        if len(self._out) + len(data) <= self._buffer_size + REPLY_ROOM:
            self._out.extend(data)


def _read_awaiting(r: Reader) -> int | None:
    """A command that waits for its argument byte, or None."""
    awaiting = r.int_or_none("awaiting", 0, 0xFF)
    if awaiting is not None and awaiting not in _ARGUMENT_COMMANDS:
        raise StateError(f"{r.part}: awaiting={awaiting:#04x} is not a command that takes an argument")
    return awaiting
