"""System requests: ``restored``, what a guest needs after its VM was
restored from a snapshot and the snapshot cannot give it (docs/agent.md,
"restored"): the wall clock set to the host's, and fresh host randomness
added to the kernel's pool with the generator reseeded, so that clones
of one snapshot do not share random numbers.

In the agent's own process, so a restore costs no program start in the
guest.  Needs root (CAP_SYS_TIME, CAP_SYS_ADMIN): otherwise EPERM."""

from __future__ import annotations

import fcntl
import os
import struct
import time
from typing import Any, Callable

from .errors import ProtocolError
from .protocol import BAD_ARGS, OK, RESTORED, field
from .wire import Stream

Handler = Callable[[Stream, dict[str, Any]], None]

RNDADDENTROPY = 0x40085203       # _IOW('R', 0x03, int[2]) + the bytes
RNDRESEEDCRNG = 0x5207           # _IO('R', 0x07)
MAX_SEED = 512                   # bytes of host randomness in one request


class SystemOps:
    """``restored``; the clock setter and the ioctl are parameters so that
    unit tests need not change the host's clock or entropy pool."""

    def __init__(self, set_clock: Callable[[float], None] | None = None,
                 ioctl: Callable[[int, int, bytes | int], object] = fcntl.ioctl) -> None:
        self._set_clock = set_clock or (lambda now: time.clock_settime(time.CLOCK_REALTIME, now))
        self._ioctl = ioctl

    def handlers(self) -> dict[str, Handler]:
        return {RESTORED: self.restored}

    def restored(self, stream: Stream, msg: dict[str, Any]) -> None:
        """Reseed from ``seed`` (hex, at most MAX_SEED bytes), then set the clock to ``time``."""
        try:
            seed = bytes.fromhex(field(msg, "seed", str))
        except ValueError:
            raise ProtocolError(BAD_ARGS, "restored: 'seed' is not hex") from None
        if not 0 < len(seed) <= MAX_SEED:
            raise ProtocolError(BAD_ARGS, f"restored: 'seed' has {len(seed)} bytes (1 to {MAX_SEED})")
        now = float(field(msg, "time", (int, float)))
        if not 0 < now < 1 << 40:
            raise ProtocolError(BAD_ARGS, f"restored: 'time' {now} is not a Unix time")
        fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
        try:
            self._ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
            self._ioctl(fd, RNDRESEEDCRNG, 0)
        finally:
            os.close(fd)
        self._set_clock(now)
        stream.send_message({"type": OK})
