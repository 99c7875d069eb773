"""Port-I/O exit round trips per second on a purpose-built guest, on this
machine's /dev/kvm: the guest writes port 0x80 N times between two serial
markers; the host times the markers.  kvmlite and QEMU (microvm, PVH boot)
run the same ELF."""

from __future__ import annotations

from bench.common import have_qemu, kvmlite_cmd, median, qemu_cmd, run_timed
from tests.guests.build import elf32

N = 200_000


def _rate(timed) -> float | None:
    start, end = timed.at(b"pingpong: start"), timed.at(b"pingpong: end")
    if start is None or end is None or end <= start:
        return None
    return N / (end - start)


def run(repeat: int = 3) -> dict:
    guest = elf32("pingpong")
    out: dict = {"what": "port-I/O exit round trips per second (guest 'out 0x80' loop)", "n": N}
    for label, variant in (("out", ""), ("in", "in=1")):
        params = f"n={N} {variant}".strip()
        ours = [_rate(run_timed(kvmlite_cmd("-k", str(guest), "-m", "64", "-p", params))) for _ in range(repeat)]
        out[f"kvmlite_{label}"] = median([r for r in ours if r])
        if have_qemu():
            theirs = [_rate(run_timed(qemu_cmd(guest, params))) for _ in range(repeat)]
            out[f"qemu_{label}"] = median([r for r in theirs if r])
            out[f"ratio_{label}"] = out[f"kvmlite_{label}"] / out[f"qemu_{label}"]
    return out
