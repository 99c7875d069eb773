"""Ethernet addresses for guests: a stable one derived from the VM's name,
and the checks a user-given one must pass.

A derived address is ``52:54:00`` (the prefix QEMU and libvirt give guests,
locally administered and unicast) followed by three bytes of the SHA-256 of
the name: the same VM gets the same address on every start, so the
guest's DHCP lease and the host's neighbour tables stay valid.
"""

from __future__ import annotations

import hashlib
import re

from kvmlite.errors import ConfigError

MAC_PREFIX = bytes((0x52, 0x54, 0x00))
_MULTICAST = 0x01           # I/G bit of the first octet (IEEE 802-2014 §8.2)
_LOCAL = 0x02               # U/L bit: locally administered
_TEXT = re.compile(r"^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}$")


def mac_from_name(name: str) -> bytes:
    """A locally administered unicast address that depends only on ``name``."""
    digest = hashlib.sha256(b"kvmlite-mac\0" + name.encode()).digest()
    return MAC_PREFIX + digest[:3]


def format_mac(mac: bytes) -> str:
    """``52:54:00:12:34:56``."""
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    """The six bytes of ``aa:bb:cc:dd:ee:ff`` (or with ``-``); a one-line
    :class:`ConfigError` for anything that is not a usable unicast address."""
    if not _TEXT.match(text.strip()):
        raise ConfigError(f"bad MAC address {text!r}: expected six hex bytes like 52:54:00:12:34:56")
    mac = bytes(int(part, 16) for part in re.split("[:-]", text.strip()))
    if mac[0] & _MULTICAST:
        raise ConfigError(f"bad MAC address {text!r}: it is a multicast address (the first byte must be even)")
    if mac == bytes(6):
        raise ConfigError(f"bad MAC address {text!r}: the all-zero address is not an address")
    return mac


def is_local(mac: bytes) -> bool:
    """Whether ``mac`` is locally administered (not a vendor's)."""
    return bool(mac[0] & _LOCAL)
