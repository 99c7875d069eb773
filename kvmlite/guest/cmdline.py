"""Kernel command-line options understood by the default guest's init.

See docs/guest.md.  The VMM adds these to its own options (console=...);
the whole line must fit the x86 boot protocol's limit: COMMAND_LINE_SIZE is
2048 bytes including the terminating NUL (arch/x86/include/asm/setup.h).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from kvmlite.errors import ConfigError

COMMAND_LINE_SIZE = 2048
MAX_CMDLINE_LENGTH = COMMAND_LINE_SIZE - 1


def encode_command(command: str) -> str:
    """``kvmlite.cmd=<base64>`` for a shell command line run by ``/bin/sh -c``."""
    if not command.strip():
        raise ConfigError("the guest command is empty")
    return "kvmlite.cmd=" + base64.b64encode(command.encode()).decode("ascii")


@dataclass(frozen=True)
class GuestOptions:
    """What the guest init should do; every field is optional."""

    command: str | None = None     # run it, then exit with its status
    root: str | None = None        # /dev/vda, LABEL=x or UUID=x
    rootfstype: str | None = None
    rootflags: str | None = None
    readonly: bool = False
    ip: str | None = None          # "10.0.2.15/24" or "10.0.2.15/24,10.0.2.2"
    debug: bool = False

    def words(self) -> list[str]:
        words = []
        if self.root:
            words += [f"root={self.root}", "ro" if self.readonly else "rw"]
        words += [f"{k}={v}" for k, v in (("rootfstype", self.rootfstype), ("rootflags", self.rootflags),
                                          ("kvmlite.ip", self.ip)) if v]
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
