"""Kernel command-line options understood by the default guest's init.

See docs/guest.md.  The VMM adds these to its own options (console=...);
the whole line must fit the x86 boot protocol's limit: COMMAND_LINE_SIZE is
2048 bytes including the terminating NUL (arch/x86/include/asm/setup.h).
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from typing import Sequence

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


def shares_option(shares: Sequence[tuple[str, bool]]) -> str:
    """``kvmlite.9p=TAG1,TAG2:ro,...``: every shared directory's mount tag,
    in the VM's order, ``:ro`` after a read-only one; the default guest
    mounts each at ``/mnt/TAG``.  ``shares`` holds (tag, read_only) pairs;
    tags are letters, digits, '_', '.' and '-' (``ShareConfig``), so
    neither ',' nor ':' can occur in one."""
    if not shares:
        raise ValueError("no shares to list")
    return "kvmlite.9p=" + ",".join(f"{tag}:ro" if read_only else tag for tag, read_only in shares)


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


@dataclass(frozen=True)
class GuestOptions:
    """What the guest init should do; every field is optional."""

    command: str | None = None     # run it, then exit with its status
    root: str | None = None        # /dev/vda, LABEL=x or UUID=x
    rootfstype: str | None = None
    rootflags: str | None = None
    readonly: bool = False
    net: str | None = None         # "dhcp" or "10.0.2.15/24,10.0.2.2[,10.0.2.3]"; None: no network
    debug: bool = False

    def words(self) -> list[str]:
        words = []
        if self.root:
            words += [f"root={self.root}", "ro" if self.readonly else "rw"]
        words += [f"{k}={v}" for k, v in (("rootfstype", self.rootfstype), ("rootflags", self.rootflags)) if v]
        if self.net is not None:
            words.append(net_option(self.net))
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
