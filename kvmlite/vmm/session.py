"""An interactive console session for ``kvmlite run``: the host terminal
attached to the guest console for as long as the VM runs.

The terminal is in raw mode only while the session is open, and is always
restored (see :class:`kvmlite.vmm.terminal.RawMode`).  Escape keys (Ctrl-A)
are honoured only when input is a terminal; piped input reaches the guest
byte for byte.
"""

from __future__ import annotations

import os
import sys
from typing import IO, TYPE_CHECKING

from kvmlite.vmm.terminal import CTRL_A, HostConsole, OutputSink

if TYPE_CHECKING:
    from kvmlite.vmm.vm import Vm, VmResult

NO_ESCAPE = -1   # never equal to a byte: escape handling off


class ConsoleSession:
    def __init__(self, vm: "Vm", stdin: IO[str] | None) -> None:
        self.vm = vm
        self._console: HostConsole | None = None
        self._fd = _usable_fd(stdin)

    @staticmethod
    def output_sink(fd: int = 1) -> OutputSink:
        return OutputSink(fd)

    def __enter__(self) -> "ConsoleSession":
        if self._fd is not None:
            devices = self.vm.devices
            self._console = HostConsole(
                self.vm.event_loop, devices.console_input, on_quit=self.vm.stop,
                send_break=devices.console_break, input_fd=self._fd,
                output=devices.console_output, escape=CTRL_A if os.isatty(self._fd) else NO_ESCAPE)
            self._console.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._console is not None:
            self._console.close()

    def wait(self) -> "VmResult":
        """Wait for the VM to end; Ctrl-C (when it reaches us) stops it."""
        while True:
            try:
                result = self.vm.wait(timeout=0.5)
            except KeyboardInterrupt:
                self.vm.stop()
                continue
            if result is not None:
                return result


def _usable_fd(stdin: IO[str] | None) -> int | None:
    if stdin is None:
        return None
    try:
        fd = stdin.fileno()
        os.fstat(fd)
    except (OSError, ValueError, AttributeError):
        return None
    return fd if fd >= 0 else None


__all__ = ["ConsoleSession", "sys"]
