"""Port-I/O exit round trips per second on a purpose-built guest, on this
machine's /dev/kvm: the guest writes port 0x80 N times between two serial
markers; the host times the markers.  kvmlite and QEMU (microvm, PVH boot)
run the same ELF."""

from __future__ import annotations

from bench.common import QEMU, Timed, have_qemu, kvmlite_cmd, measure, qemu_cmd, ratio
from tests.guests.build import elf32

N = 200_000


def _rate(timed: Timed) -> float | None:
    start, end = timed.at(b"pingpong: start"), timed.at(b"pingpong: end")
    if start is None or end is None or end <= start:
        return None
    return N / (end - start)


def run(repeat: int = 3) -> dict:
    guest = elf32("pingpong")
    out: dict = {"what": "port-I/O exit round trips per second (guest 'out 0x80' loop)", "n": N}
    for label, variant in (("out", ""), ("in", "in=1")):
        params = f"n={N} {variant}".strip()
        out[f"kvmlite_{label}"] = measure("kvmlite", lambda: kvmlite_cmd("-k", str(guest), "-m", "64", "-p", params),
                                          _rate, repeat, digits=0)
        if have_qemu():
            out[f"qemu_{label}"] = measure("qemu", lambda: qemu_cmd(guest, params), _rate, repeat, digits=0)
        else:
            out[f"qemu_{label}"] = f"failed: {QEMU} is not installed (apt-get install qemu-system-x86)"
        out[f"ratio_{label}"] = ratio(out[f"kvmlite_{label}"], out[f"qemu_{label}"])
    return out
