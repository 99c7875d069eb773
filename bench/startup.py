"""Process start to the guest's first instruction: the 'first' guest's first
instruction writes a byte to COM1; the host times process spawn to that
byte arriving on the VMM's stdout."""

from __future__ import annotations

import subprocess
import sys

from bench.common import QEMU, REPO, Timed, have_qemu, kvmlite_cmd, measure, qemu_cmd, qemu_cpu, ratio
from tests.guests.build import elf32


def _first_byte_ms(timed: Timed) -> float | None:
    return None if timed.first_byte is None else (timed.first_byte - timed.start) * 1000


def run(repeat: int = 10) -> dict:
    # An installed kvmlite has byte-compiled modules (pip compiles them);
    # measure that, not the first-run compile of a fresh checkout.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "kvmlite")], check=True)
    guest = elf32("first")
    out: dict = {"what": "process start to first guest instruction (ms, median)"}
    out["kvmlite_ms"] = measure("kvmlite", lambda: kvmlite_cmd("-k", str(guest), "-m", "64"), _first_byte_ms, repeat)
    if not have_qemu():
        out["qemu_ms"] = f"failed: {QEMU} is not installed (apt-get install qemu-system-x86)"
    else:
        out["qemu_ms"] = measure("qemu", lambda: qemu_cmd(guest, ""), _first_byte_ms, repeat)
        out["qemu_cpu"] = _cpu_or_none()
    out["ratio"] = ratio(out["kvmlite_ms"], out["qemu_ms"])
    return out


def _cpu_or_none() -> str | None:
    try:
        return qemu_cpu()
    except Exception:
        return None
