"""virtio-9p throughput and metadata rate seen by a real Linux guest, in the
nested test host.

kvmlite and QEMU (``-M pc``, ``-virtfs local,security_model=passthrough``,
which is ``virtio-9p-pci``) boot the same 9p-capable default guest (Debian's
generic kernel, ``default_guest(shares=True)``) in one test-host boot, each
sharing the same directory on the test host's tmpfs under the tag
``bench``.  Both guests get the same kernel command line, so the same init
mounts the share the same way: ``trans=virtio,version=9p2000.L,
msize=512000``, no ``cache=`` option (the kernel's default, no page cache
for file data), at /mnt/bench.  In the guest, ``p9bench``
(bench/guest/p9bench.c, built statically here and put in the share) writes
``MIB`` MiB in 1 MiB ``write()``\\ s and fsyncs, reads it back in 1 MiB
``read()``\\ s, then creates, stats and unlinks ``FILES`` small files one
after another.  kvmlite and QEMU alternate ``ROUNDS`` times and the median
of each is reported.  Absolute numbers are low (the test host runs under
TCG); only the ratios mean anything.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import console_error, keep_console, REPO, number_or_failure, ratio, share_guest

MIB = 64
# The 10,000 files; under the emulated test host QEMU itself creates
# about 5 files a second (~30 min per VMM), so KVMLITE_BENCH_P9_FILES may
# lower it for a quick run (BENCHMARKS.md says which count a figure used).
FILES = int(os.environ.get("KVMLITE_BENCH_P9_FILES", "10000"))
ROUNDS = int(os.environ.get("KVMLITE_BENCH_ROUNDS", "2"))
SHARE = "/tmp/kvmlite-p9bench"      # on the test host's tmpfs, fresh at each boot
TAG = "bench"
MODES = {"seqwrite": "mbps", "seqread": "mbps", "meta": "rate"}
LINE = re.compile(r"^VMM=(\S+) p9bench mode=(\S+) bytes=\d+ files=\d+ seconds=\S+ mbps=(\S+) rate=(\S+)", re.M)


def guest_command() -> str:
    """Each step in a process of its own (the file written, closed, then read
    by a fresh process, as dd would)."""
    return "; ".join(f"/mnt/{TAG}/p9bench /mnt/{TAG}/work {MIB} {FILES} {mode} 2>&1 | sed s/^/VMM=$VMM\\ /"
                     for mode in MODES)


def script(kernel: Path, initrd: Path, tool: Path) -> str:
    py = shlex.quote(sys.executable)
    cmd = guest_command()
    ours = (f"timeout 7200 {py} -m kvmlite run -k {kernel} -i {initrd} -m 512 -p quiet --9p {SHARE},{TAG} "
            f"-- {shlex.quote('VMM=kvmlite; ' + cmd)} </dev/null")
    b64 = base64.b64encode(("VMM=qemu; " + cmd).encode()).decode()
    qemu = ("timeout 7200 qemu-system-x86_64 -enable-kvm -M pc -cpu host -m 512 -smp 1 -display none "
            "-serial stdio -monitor none -nic none -no-reboot -nodefaults "
            f"-kernel {kernel} -initrd {initrd} "
            f"-append 'console=ttyS0 quiet panic=-1 kvmlite.9p={TAG} kvmlite.cmd={b64}' "
            "-device isa-debug-exit,iobase=0x501,iosize=1 "
            f"-virtfs local,path={SHARE},mount_tag={TAG},security_model=passthrough,id=p0 </dev/null")
    clean = f"rm -rf {SHARE}/work; mkdir -p {SHARE}/work"
    return "\n".join([f"export PYTHONPATH={shlex.quote(str(REPO))}",
                      f"mkdir -p {SHARE} && cp {tool} {SHARE}/p9bench",
                      *[f"{clean}; {ours}\n{clean}; {qemu}"] * ROUNDS])


def parse(console: str) -> dict:
    console = console.replace("\r", "")
    found: dict[tuple[str, str], list[float]] = {}
    for vmm, mode, mbps, rate in LINE.findall(console):
        found.setdefault((vmm, mode), []).append(float(rate if MODES.get(mode) == "rate" else mbps))
    out: dict = {}
    for mode, unit in MODES.items():
        for vmm in ("kvmlite", "qemu"):
            out[f"{vmm}_{mode}_{'files_per_s' if unit == 'rate' else 'MBps'}"] = number_or_failure(
                found.get((vmm, mode), []), [vmm_error(console, vmm)])
        ours, theirs = (out[f"{v}_{mode}_{'files_per_s' if unit == 'rate' else 'MBps'}"] for v in ("kvmlite", "qemu"))
        out[f"ratio_{mode}"] = ratio(ours, theirs)
    return out


def vmm_error(console: str, vmm: str) -> str:
    """The VMM's own error line (or p9bench's), else a pointer to the log."""
    return console_error(console, vmm, (f"VMM={vmm} p9bench:",)) or f"{vmm} printed no result and no error line"


def build_tool(work: Path) -> Path:
    tool = work / "p9bench"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(tool), str(REPO / "bench" / "guest" / "p9bench.c")],
                   check=True)
    return tool


def run() -> dict:
    from tests.nested.testhost import TestHost

    guest, why = share_guest()
    if guest is None:
        return {"error": why}
    host = TestHost.prepare()
    with tempfile.TemporaryDirectory(prefix="kvmlite-p9bench-") as tmp:
        work = Path(tmp)
        tool = build_tool(work)
        result = host.run(script(guest.kernel, guest.initrd, tool), 4 * 7200 * ROUNDS, work)
        keep_console("p9_nested", result.console)
        return {"what": f"virtio-9p in a Linux guest, nested test host (p9bench: {MIB} MiB in 1 MiB requests, "
                        f"create+stat+unlink of {FILES} files; msize 512000, no cache; median of {ROUNDS})",
                **parse(result.console)}
