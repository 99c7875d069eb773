"""Process start to the guest's first instruction: the 'first' guest's first
instruction writes a byte to COM1; the host times process spawn to that
byte arriving on the VMM's stdout."""

from __future__ import annotations

import subprocess
import sys

from bench.common import REPO, have_qemu, kvmlite_cmd, median, qemu_cmd, run_timed
from tests.guests.build import elf32


def run(repeat: int = 10) -> dict:
    # An installed kvmlite has byte-compiled modules (pip compiles them);
    # measure that, not the first-run compile of a fresh checkout.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "kvmlite")], check=True)
    guest = elf32("first")
    out: dict = {"what": "process start to first guest instruction (ms, median)"}
    ours = []
    for _ in range(repeat):
        t = run_timed(kvmlite_cmd("-k", str(guest), "-m", "64"))
        if t.first_byte is not None:
            ours.append((t.first_byte - t.start) * 1000)
    out["kvmlite_ms"] = median(ours)
    out["kvmlite_all_ms"] = [round(x, 1) for x in ours]
    if have_qemu():
        theirs = []
        for _ in range(repeat):
            t = run_timed(qemu_cmd(guest, ""))
            if t.first_byte is not None:
                theirs.append((t.first_byte - t.start) * 1000)
        out["qemu_ms"] = median(theirs)
    return out
