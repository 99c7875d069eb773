"""System requests: ``restored``, what a guest needs after its VM was
restored from a snapshot and the snapshot cannot give it (docs/agent.md,
"restored"): the wall clock set to the host's, fresh host randomness
added to the kernel's pool with the generator reseeded, so that clones
of one snapshot do not share random numbers, and each NIC's address
changed to the one the restored VM gave it (a clone's own MAC).

In the agent's own process, so a restore costs no program start in the
guest.  Needs root (CAP_SYS_TIME, CAP_SYS_ADMIN, CAP_NET_ADMIN):
otherwise EPERM."""

from __future__ import annotations

import fcntl
import os
import socket
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
SIOCSIFHWADDR = 0x8924
ARPHRD_ETHER = 1
IFNAMSIZ = 16
IFREQ_SIZE = 40                  # struct ifreq: the name, then a 24-byte union (here a sockaddr)
MAX_MACS = 64                    # address changes in one request
NET_DIR = "/sys/class/net"


class SystemOps:
    """``restored``; the clock setter and the ioctl are parameters so that
    unit tests need not change the host's clock or entropy pool."""

    def __init__(self, set_clock: Callable[[float], None] | None = None,
                 ioctl: Callable[[int, int, bytes | int], object] = fcntl.ioctl, net_dir: str = NET_DIR) -> None:
        self._set_clock = set_clock or (lambda now: time.clock_settime(time.CLOCK_REALTIME, now))
        self._ioctl = ioctl
        self._net_dir = net_dir

    def handlers(self) -> dict[str, Handler]:
        return {RESTORED: self.restored}

    def restored(self, stream: Stream, msg: dict[str, Any]) -> None:
        """Reseed from ``seed`` (hex, at most MAX_SEED bytes), set the clock
        to ``time``, then give each interface whose address is the first of
        a ``macs`` pair the second; the answer names the interfaces changed."""
        try:
            seed = bytes.fromhex(field(msg, "seed", str))
        except ValueError:
            raise ProtocolError(BAD_ARGS, "restored: 'seed' is not hex") from None
        if not 0 < len(seed) <= MAX_SEED:
            raise ProtocolError(BAD_ARGS, f"restored: 'seed' has {len(seed)} bytes (1 to {MAX_SEED})")
        now = float(field(msg, "time", (int, float)))
        if not 0 < now < 1 << 40:
            raise ProtocolError(BAD_ARGS, f"restored: 'time' {now} is not a Unix time")
        macs = _mac_pairs(msg.get("macs", []))
        fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
        try:
            self._ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
            self._ioctl(fd, RNDRESEEDCRNG, 0)
        finally:
            os.close(fd)
        self._set_clock(now)
        stream.send_message({"type": OK, "interfaces": self._set_macs(macs)})

    def _set_macs(self, pairs: dict[bytes, bytes]) -> list[str]:
        """SIOCSIFHWADDR on each interface whose address is a key of ``pairs``."""
        if not pairs:
            return []
        changed = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for name in sorted(os.listdir(self._net_dir)):
                try:
                    with open(os.path.join(self._net_dir, name, "address")) as f:
                        current = _parse_mac(f.read().strip())
                except (OSError, ValueError):
                    continue                    # not an Ethernet interface
                new = pairs.get(current)
                if new is not None and len(name.encode()) < IFNAMSIZ:
                    ifreq = name.encode().ljust(IFNAMSIZ, b"\0") + struct.pack("=H", ARPHRD_ETHER) + new
                    self._ioctl(sock.fileno(), SIOCSIFHWADDR, ifreq.ljust(IFREQ_SIZE, b"\0"))
                    changed.append(name)
        return changed


def _parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(text)
    return bytes.fromhex("".join(parts))


def _mac_pairs(value: object) -> dict[bytes, bytes]:
    """``macs``: at most MAX_MACS ``[old, new]`` pairs of ``aa:bb:cc:dd:ee:ff``
    strings; a new address must be unicast and not all zeros."""
    if not isinstance(value, list) or len(value) > MAX_MACS:
        raise ProtocolError(BAD_ARGS, f"restored: 'macs' is not a list of at most {MAX_MACS} pairs")
    pairs = {}
    for pair in value:
        try:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(m, str) for m in pair)):
                raise ValueError(pair)
            old, new = _parse_mac(pair[0]), _parse_mac(pair[1])
        except ValueError:
            raise ProtocolError(BAD_ARGS, f"restored: 'macs' member {pair!r} is not [old, new] MACs") from None
        if new[0] & 1 or new == bytes(6):
            raise ProtocolError(BAD_ARGS, f"restored: {pair[1]} is not a unicast MAC")
        pairs[old] = new
    return pairs
