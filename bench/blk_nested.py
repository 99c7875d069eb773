"""virtio-blk throughput seen by a real Linux guest, in the nested test host.

kvmlite and QEMU (``-M pc``, ``virtio-blk-pci``, ``cache=writeback``,
``aio=threads``) boot the same Debian cloud kernel and default-guest
initramfs in the test host with the same raw image (256 MiB on the test
host's tmpfs) and a second disk holding ``blkbench`` (bench/guest/blkbench.c,
built statically here).  In the guest, blkbench runs sequential 1 MiB and
random 4 KiB reads and writes with O_DIRECT and QD parallel requests for a
few seconds each; kvmlite and QEMU alternate, ``ROUNDS`` times each, and
the median of each is reported (the emulated test host is noisy: the same
QEMU run has measured anywhere between 340 and 600 MB/s).

``cache=none`` cannot be compared here: the image lives on tmpfs, which has
no O_DIRECT.  kvmlite does buffered I/O (with fdatasync on flush), which is
QEMU's writeback mode.  Absolute numbers are low (the test host runs under
TCG); only the ratio kvmlite/QEMU means anything.
"""

from __future__ import annotations

import base64
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import console_error, REPO, ratio

MODES = ("seqread", "seqwrite", "randread", "randwrite")
SECONDS = 4
QD = 8
ROUNDS = 3            # kvmlite and QEMU alternate; the median of each is reported
LINE = re.compile(r"^VMM=(\S+) blkbench mode=(\S+) bs=\d+ qd=\d+ ops=\d+ seconds=\S+ mbps=(\S+) iops=(\S+)", re.M)


def build_tools(work: Path) -> Path:
    """An ext4 image with a static blkbench in it."""
    tools = work / "tools"
    tools.mkdir()
    subprocess.run(["gcc", "-O2", "-static", "-pthread", "-o", str(tools / "blkbench"),
                    str(REPO / "bench" / "guest" / "blkbench.c")], check=True)
    image = work / "tools.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tools), str(image), "16M"], check=True)
    return image


def guest_command() -> str:
    runs = "; ".join(f"/mnt/blkbench /dev/vda {m} {SECONDS} {QD} | sed s/^/VMM=$VMM\\ /" for m in MODES)
    return f"mount -o ro /dev/vdb /mnt && {runs}"


def script(kernel: Path, initrd: Path, tools: Path) -> str:
    py = shlex.quote(sys.executable)
    cmd = guest_command()
    ours = (f"{py} -m kvmlite run -k {kernel} -i {initrd} -m 512 -p quiet -d /tmp/data.img -d {tools} "
            f"-- {shlex.quote('VMM=kvmlite; ' + cmd)}")
    b64 = base64.b64encode(("VMM=qemu; " + cmd).encode()).decode()
    qemu = ("qemu-system-x86_64 -enable-kvm -M pc -cpu host -m 512 -smp 1 -display none -serial stdio "
            "-monitor none -nic none -no-reboot -nodefaults "
            f"-kernel {kernel} -initrd {initrd} -append 'console=ttyS0 quiet panic=-1 kvmlite.cmd={b64}' "
            "-device isa-debug-exit,iobase=0x501,iosize=1 "
            "-drive file=/tmp/data.img,if=none,id=d0,format=raw,cache=writeback,aio=threads "
            "-device virtio-blk-pci,drive=d0 "
            f"-drive file={tools},if=none,id=d1,format=raw,readonly=on -device virtio-blk-pci,drive=d1")
    return "\n".join([f"export PYTHONPATH={shlex.quote(str(REPO))}",
                      "dd if=/dev/urandom of=/tmp/data.img bs=1M count=256 2>/dev/null",
                      *[ours, qemu] * ROUNDS])


def parse(console: str) -> dict:
    console = console.replace("\r", "")
    found: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for vmm, mode, mbps, iops in LINE.findall(console):
        found.setdefault(vmm, {}).setdefault(mode, []).append((float(mbps), float(iops)))
    out: dict = {}
    for mode in MODES:
        for vmm in ("kvmlite", "qemu"):
            runs = sorted(found.get(vmm, {}).get(mode, []))
            if runs:
                mid = runs[len(runs) // 2]
                out[f"{vmm}_{mode}"] = {"MBps": mid[0], "IOPS": mid[1], "runs": len(runs)}
            else:
                out[f"{vmm}_{mode}"] = f"failed: {vmm_error(console, vmm)}"
        ours, theirs = out[f"kvmlite_{mode}"], out[f"qemu_{mode}"]
        out[f"ratio_{mode}"] = ratio(*(x if isinstance(x, str) else x["IOPS"] for x in (ours, theirs)))
    return out


def vmm_error(console: str, vmm: str) -> str:
    """The VMM's own error line on the console, else a pointer to the log."""
    return console_error(console, vmm) or f"{vmm} printed no result and no error line"


def run() -> dict:
    from tests.nested.testhost import TestHost

    host = TestHost.prepare()
    guest = host.files.guest
    with tempfile.TemporaryDirectory(prefix="kvmlite-blkbench-") as tmp:
        work = Path(tmp)
        tools = build_tools(work)
        result = host.run(script(guest.kernel, guest.initrd, tools), 2400, work)
        numbers = parse(result.console)
        return {"what": f"virtio-blk in a Linux guest, nested test host (blkbench, O_DIRECT, QD {QD}, "
                        f"median of {ROUNDS})",
                **numbers}
