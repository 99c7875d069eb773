"""Boot a kernel + initramfs under QEMU's emulator (TCG) on this machine.

No KVM needed, so the guest init's behaviour (markers, exit status through
port 0x501, root mounting, Ctrl-Alt-Del) is tested here in seconds.  QEMU's
``isa-debug-exit`` device at 0x501 ends QEMU with status ``(value << 1) | 1``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest

from kvmlite.arch.x86.layout import PORT_GUEST_EXIT

QEMU = "qemu-system-x86_64"


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        pytest.skip(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    return path


def debug_exit_status(value: int) -> int:
    """QEMU's exit status after the guest writes ``value`` to isa-debug-exit."""
    return (value << 1) | 1


@dataclass
class Boot:
    returncode: int
    console: str


class _Console:
    """Collects QEMU's serial output from a thread; lets a test wait for text."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):   # type: ignore[attr-defined,union-attr]
            with self._lock:
                self._buf += chunk

    def text(self) -> str:
        with self._lock:
            return self._buf.decode(errors="replace").replace("\r", "")

    def wait_for(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return True
            time.sleep(0.1)
        return False

    def join(self) -> None:
        self._thread.join(5)


def boot(kernel: Path, initrd: Path, append: str, tmp: Path, *, disk: Path | None = None,
         user_net: bool = False, ctrl_alt_del_after: str | None = None, timeout: float = 180,
         extra: Sequence[str] = ()) -> Boot:
    """Run QEMU until the guest powers off or exits; optionally press Ctrl-Alt-Del
    once ``ctrl_alt_del_after`` appears on the console.  ``user_net`` adds a
    virtio-net NIC on QEMU's user-mode network (guest 10.0.2.15 by DHCP,
    gateway 10.0.2.2 = this machine's 127.0.0.1, DNS 10.0.2.3).  ``extra`` is
    appended to QEMU's arguments (virtio-9p shares)."""
    monitor = tmp / "monitor.sock"
    argv = [qemu_binary(), "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1",
            "-display", "none", "-serial", "stdio", "-monitor", f"unix:{monitor},server,nowait",
            "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 panic=-1 {append}",
            "-device", f"isa-debug-exit,iobase={PORT_GUEST_EXIT:#x},iosize=1"]
    if disk is not None:
        argv += ["-drive", f"file={disk},if=virtio,format=raw"]
    if user_net:
        argv += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]
    argv += list(extra)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    console = _Console(proc)
    try:
        if ctrl_alt_del_after is not None and console.wait_for(ctrl_alt_del_after, timeout):
            _send_monitor(monitor, "sendkey ctrl-alt-delete")
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"QEMU did not finish in {timeout} s; console:\n{console.text()[-3000:]}")
    console.join()
    return Boot(rc, console.text())


def _send_monitor(path: Path, command: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.recv(4096)   # banner
        s.sendall(command.encode() + b"\n")
        time.sleep(0.5)
