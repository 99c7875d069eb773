"""Kernel command-line options understood by the default guest's init.

See docs/guest.md.  The VMM adds these to its own options (console=...);
the whole line must fit the x86 boot protocol's limit: COMMAND_LINE_SIZE is
2048 bytes including the terminating NUL (arch/x86/include/asm/setup.h).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from typing import NamedTuple, Sequence

from kvmlite.errors import ConfigError

COMMAND_LINE_SIZE = 2048
MAX_CMDLINE_LENGTH = COMMAND_LINE_SIZE - 1


def encode_command(command: str) -> str:
    """``kvmlite.cmd=<base64>`` for a shell command line run by ``/bin/sh -c``."""
    if not command.strip():
        raise ConfigError("the guest command is empty")
    return "kvmlite.cmd=" + base64.b64encode(command.encode()).decode("ascii")


def net_option(value: str) -> str:
    """``kvmlite.net=<value>``; ``value`` is ``dhcp`` or ``ADDR/PREFIX,GATEWAY[,DNS]`` (IPv4)."""
    if value != "dhcp":
        _check_static_net(value)
    return f"kvmlite.net={value}"


def _check_static_net(value: str) -> None:
    fields = value.split(",")
    try:
        if len(fields) not in (2, 3) or "/" not in fields[0]:
            raise ValueError("wrong form")
        interface = ipaddress.IPv4Interface(fields[0])
        gateway = ipaddress.IPv4Address(fields[1])
        for server in fields[2:]:
            ipaddress.IPv4Address(server)
    except ValueError:
        raise ConfigError(f"guest network '{value}' is not dhcp or ADDR/PREFIX,GATEWAY[,DNS] "
                          "(IPv4, like 192.168.33.15/24,192.168.33.1)") from None
    if gateway not in interface.network:
        raise ConfigError(f"guest network '{value}': gateway {gateway} is outside {interface.network}")


class GuestShare(NamedTuple):
    """A virtio-9p share as the guest init sees it: its mount tag, read-only or not."""

    tag: str
    readonly: bool = False


# A tag is the 9p "device" name and a directory name under /mnt: no separator
# of kvmlite.9p= (',' ':'), no '/', no space; the same rule as --9p's
# (kvmlite.vmm.config.ShareConfig), which checks tags before they get here.
_TAG = re.compile(r"[A-Za-z0-9_.-]+")


def check_tag(tag: str) -> str:
    """``tag`` when the guest init can mount it at ``/mnt/TAG``, else a one-line ConfigError."""
    if not _TAG.fullmatch(tag) or tag in (".", ".."):
        raise ConfigError(f"9p share tag '{tag}' must be letters, digits, '_', '.' or '-' "
                          "(it names /mnt/TAG in the guest)")
    return tag


def shares_option(shares: Sequence[GuestShare | tuple[str, bool]]) -> str:
    """``kvmlite.9p=TAG1,TAG2:ro,...``: every share's mount tag in the VM's
    order, ``:ro`` after a read-only one; the default guest mounts each at
    ``/mnt/TAG``.  ``shares`` holds (tag, read_only) pairs, at least one;
    tags are unique."""
    if not shares:
        raise ValueError("no shares to list")
    listed = [GuestShare(*share) for share in shares]
    seen: set[str] = set()
    for share in listed:
        if check_tag(share.tag) in seen:
            raise ConfigError(f"9p share tag '{share.tag}' is given twice")
        seen.add(share.tag)
    return "kvmlite.9p=" + ",".join(share.tag + (":ro" if share.readonly else "") for share in listed)


@dataclass(frozen=True)
class GuestOptions:
    """What the guest init should do; every field is optional."""

    command: str | None = None     # run it, then exit with its status
    root: str | None = None        # /dev/vda, LABEL=x or UUID=x
    rootfstype: str | None = None
    rootflags: str | None = None
    readonly: bool = False
    net: str | None = None         # "dhcp" or "10.0.2.15/24,10.0.2.2[,10.0.2.3]"; None: no network
    shares: tuple[GuestShare, ...] = ()   # kvmlite.9p=: each mounted at /mnt/TAG
    overlay: bool = False          # the root read-only below a tmpfs overlay (kvmlite.overlay=1)
    init: str | None = None        # the 9p root's init (default /sbin/init)
    debug: bool = False

    def words(self) -> list[str]:
        words = []
        if self.root:
            words += [f"root={self.root}", "ro" if self.readonly else "rw"]
        words += [f"{k}={v}" for k, v in (("rootfstype", self.rootfstype), ("rootflags", self.rootflags)) if v]
        if self.init:
            words.append(f"init={self.init}")
        if self.net is not None:
            words.append(net_option(self.net))
        if self.shares:
            words.append(shares_option(self.shares))
        if self.overlay:
            words.append("kvmlite.overlay=1")
        if self.debug:
            words.append("kvmlite.debug")
        if self.command is not None:
            words.append(encode_command(self.command))
        for word in words:
            if any(c.isspace() for c in word):
                raise ConfigError(f"guest option {word.split('=')[0]} must not contain spaces")
        return words


def join(base: str, options: GuestOptions) -> str:
    """``base`` (the VMM's own options) followed by the guest's, length-checked."""
    line = " ".join([base.strip(), *options.words()]).strip()
    if len(line.encode()) > MAX_CMDLINE_LENGTH:
        raise ConfigError(f"kernel command line is {len(line.encode())} bytes, the limit is "
                          f"{MAX_CMDLINE_LENGTH} (shorten the guest command)")
    return line
