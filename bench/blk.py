"""virtio-blk throughput: kvmlite and QEMU side by side on this machine's
/dev/kvm, with the same purpose-built guest (tests/guests/src/virtio,
``mode=bench``) and the same raw image file.

What runs: one 256 MiB raw image, fully written (no holes) and read once so
the page cache holds it.  The guest keeps 32 requests in flight and runs
four phases, each followed for writes by one FLUSH:

* seq-write, seq-read: 1 MiB requests, sequential, wrapping at the end of
  the image (4 GiB per phase);
* rand-write, rand-read: 4 KiB requests at random 4 KiB-aligned offsets
  (65,536 per phase).

The guest prints ``bench: begin NAME`` and ``bench: end NAME``; the host
timestamps the lines as they arrive on the VMM's stdout (``run_timed``), so
nothing is timed inside the guest.  Each configuration runs ``repeat``
times; the median is reported, in MB/s (10^6 bytes a second) and IOPS.

Configurations:

* kvmlite: virtio-blk over PCI with MSI-X, buffered ``preadv``/``pwritev``
  on the image (the host page cache), ``fdatasync`` on FLUSH.  kvmlite has
  no cache option.
* QEMU ``cache=writeback``: the page cache too, ``fdatasync`` on FLUSH.
  This is the like-for-like comparison, and ``ratio_writeback`` is
  kvmlite / QEMU for it.
* QEMU ``cache=none``: ``O_DIRECT``, so reads and writes go to the host's
  disk (here itself a virtual disk) and the numbers measure that disk as
  much as the VMM.  Shown for reference (``ratio_none``), and skipped when
  the image's filesystem has no ``O_DIRECT`` (tmpfs).

QEMU runs ``-M pc`` (SeaBIOS assigns the BARs; the guest boots through the
PVH note), with ``aio=threads``; its exact command line is in the result.

Limits, honestly:

* This /dev/kvm is PVM-based (see /work/shared/HOST.md): every exit (each
  doorbell write, each MSI) costs more than on hardware, and guest
  kernel-mode code is emulated at roughly 0.5 us an instruction.  The
  guest therefore runs its request loop in user mode (CPL3, native speed;
  ``calibrate`` below is that loop alone, without a device) and enters its
  kernel only to sleep in ``hlt`` and for interrupts.  Both VMMs pay the
  same exit and interrupt costs, which are a larger share of the total
  than they would be on VT-x/SVM, so the ratios understate how far apart
  the device models are.
* The host has 2 CPUs.  The guest's vCPU, the VMM's I/O and worker
  threads and QEMU's thread pool share them.
* Buffered I/O on a warm page cache measures memory copies and the VMM's
  per-request overhead, not the disk; only ``cache=none`` touches it.
* ``guest_only_ops_s`` (the guest's loop against a ring it completes
  itself) must stay far above every IOPS figure, or the guest is what was
  measured.  ``irqs_per_op`` shows how often the guest had to sleep.
* ``torn_used_idx_reads`` counts the times the guest read a used idx that
  cannot be (more completions than requests in flight): a VMM updating the
  field with more than one store.  kvmlite did (``struct.pack_into`` zeroes
  the field before storing it) until ring indexes got one full-width store;
  it must stay 0.  The guest reads again, so the rates stand either way.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

from statistics import median

from bench.common import QEMU, BaselineError, Timed, have_qemu, kvmlite_cmd, qemu_cmd, run_timed
from tests.guests.build import pvh64

IMAGE_MIB = 256
MEM_MIB = 128
QD = 32
SEQ_OPS = 4096                  # 1 MiB requests: 4 GiB, 16 passes over the image
RAND_OPS = 65536                # 4 KiB requests
CALIBRATE_OPS = 2_000_000
SEQ_BS = 1 << 20
RAND_BS = 4096
PHASES = {"seq-write": SEQ_BS, "seq-read": SEQ_BS, "rand-write": RAND_BS, "rand-read": RAND_BS}
TIMEOUT = 600.0

GUEST_PARAMS = (f"mode=bench qd={QD} seq_mb={SEQ_OPS} rand_ops={RAND_OPS} calibrate={CALIBRATE_OPS} "
                f"timeout={int(TIMEOUT)}")
_RESULT = re.compile(rb"bench: result (\S+) ops=(\d+) errors=(\d+) irqs=(\d+) torn=(\d+)")


def make_image(directory: Path) -> Path:
    """A fully allocated raw image (random data, no holes), synced and then
    read once so buffered readers start from a warm page cache."""
    path = directory / "blk-bench.img"
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(IMAGE_MIB):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    return path


def supports_o_direct(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    os.close(fd)
    return True


def kvmlite_command(guest: Path, image: Path) -> list[str]:
    return kvmlite_cmd("-k", str(guest), "-m", str(MEM_MIB), "-d", str(image), "-p", GUEST_PARAMS)


def qemu_command(guest: Path, image: Path, cache: str) -> list[str]:
    if not have_qemu():
        raise BaselineError(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    cmd = qemu_cmd(guest, GUEST_PARAMS, machine="pc")
    cmd[cmd.index("-m") + 1] = str(MEM_MIB)
    return cmd + ["-drive", f"file={image},if=none,id=d0,format=raw,cache={cache},aio=threads",
                  "-device", "virtio-blk-pci,drive=d0"]


def phase_seconds(timed: Timed) -> dict[str, float]:
    """Seconds from each phase's begin line to its end line."""
    out: dict[str, float] = {}
    for name in (*PHASES, "calibrate"):
        start, end = timed.at(f"bench: begin {name} ".encode()), timed.at(f"bench: end {name}".encode())
        if start is not None and end is not None and end > start:
            out[name] = end - start
    # one FLUSH after each write phase, in phase order (seq-write, rand-write)
    flushes = [t for t, line in timed.lines if line.startswith((b"bench: begin flush", b"bench: end flush"))]
    for i, name in enumerate(("flush-after-seq-write", "flush-after-rand-write")):
        if len(flushes) >= 2 * i + 2:
            out[name] = flushes[2 * i + 1] - flushes[2 * i]
    return out


def results(timed: Timed) -> dict[str, dict[str, int]]:
    out = {}
    for _t, line in timed.lines:
        m = _RESULT.match(line)
        if m and m.group(1).decode() != "flush":
            out[m.group(1).decode()] = {"ops": int(m.group(2)), "errors": int(m.group(3)),
                                        "irqs": int(m.group(4)), "torn": int(m.group(5))}
    return out


def one_run(cmd: list[str]) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
    timed = run_timed(cmd, timeout=TIMEOUT)
    seconds, counts = phase_seconds(timed), results(timed)
    done = any(line.startswith(b"virtio: done failures=0") for _t, line in timed.lines)
    if not done or set(PHASES) - set(seconds):
        raise RuntimeError(f"run incomplete: {timed.failure(Path(cmd[0]).name)}")
    for name, c in counts.items():
        if c["errors"]:
            raise RuntimeError(f"{cmd[0]}: {c['errors']} failed requests in {name}")
    return seconds, counts


def summarise(runs: list[tuple[dict[str, float], dict[str, dict[str, int]]]]) -> dict:
    """Median rates over the runs, per phase."""
    out: dict = {}
    for name, bs in PHASES.items():
        secs = median([s[name] for s, _c in runs])
        ops = runs[0][1][name]["ops"]
        out[name] = {"MB_s": round(ops * bs / secs / 1e6, 1), "IOPS": round(ops / secs),
                     "seconds": round(secs, 3), "ops": ops,
                     "irqs_per_op": round(median([c[name]["irqs"] / ops for _s, c in runs]), 3)}
    for name in ("flush-after-seq-write", "flush-after-rand-write"):
        flush = [s[name] for s, _c in runs if name in s]
        out[f"{name}_ms"] = round(median(flush) * 1000, 1) if flush else None
    # times the guest read an impossible used idx (a VMM updating it with
    # more than one store; the guest reads again), over all runs
    out["torn_used_idx_reads"] = sum(c[name]["torn"] for _s, c in runs for name in PHASES)
    calib = [s["calibrate"] for s, _c in runs if "calibrate" in s]
    out["guest_only_ops_s"] = round(CALIBRATE_OPS / median(calib)) if calib else None
    return out


def ratios(ours: dict | str, theirs: dict | str) -> dict[str, float] | str:
    """Per phase kvmlite / QEMU, or which side failed."""
    if isinstance(ours, str):
        return f"none: kvmlite {ours}"
    if isinstance(theirs, str):
        return f"none: the baseline {theirs}"
    return {name: round(ours[name]["MB_s"] / theirs[name]["MB_s"], 2) for name in PHASES}


def run(repeat: int = 3) -> dict:
    guest = pvh64("virtio")
    workdir = Path(tempfile.mkdtemp(prefix="kvmlite-bench-blk-", dir=os.environ.get("BENCH_TMPDIR")))
    try:
        image = make_image(workdir)
        out: dict = {
            "what": (f"virtio-blk, {IMAGE_MIB} MiB raw image, qd={QD}: sequential 1 MiB and random 4 KiB "
                     "requests; MB/s = 10^6 bytes/s, median of runs"),
            "guest_params": GUEST_PARAMS,
            "kvmlite_command": " ".join(kvmlite_command(guest, image)),
        }
        configs: dict[str, list[str]] = {"kvmlite": kvmlite_command(guest, image)}
        try:
            configs["qemu_writeback"] = qemu_command(guest, image, "writeback")
            if supports_o_direct(image):
                configs["qemu_none"] = qemu_command(guest, image, "none")
            else:
                out["qemu_none"] = "skipped: the image's filesystem has no O_DIRECT"
        except BaselineError as exc:
            out["qemu_writeback"] = out["ratio_writeback"] = f"failed: {exc}"
        for label, cmd in configs.items():
            if label.startswith("qemu"):
                out[f"{label}_command"] = " ".join(cmd)
            try:
                out[label] = summarise([one_run(cmd) for _ in range(repeat)])
            except RuntimeError as exc:      # a VMM that cannot run is reported with its own error
                out[label] = f"failed: {exc}"
        for label in ("qemu_writeback", "qemu_none"):
            if label in configs:
                out[f"ratio_{label.split('_', 1)[1]}"] = ratios(out["kvmlite"], out[label])
        out["like_for_like"] = "ratio_writeback: kvmlite and QEMU cache=writeback both use the page cache"
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
