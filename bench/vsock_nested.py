"""virtio-vsock and the sandbox SDK, with real Linux in the nested test host.

Two parts in one test-host boot:

* **Stream throughput**, kvmlite against QEMU's in-kernel vhost-vsock
  (``-device vhost-vsock-pci``): both boot the same Debian cloud kernel and
  default-guest initramfs with a second disk holding the host's ``socat``
  (and its libraries, run through their loader).  In the guest, socat
  sends ``MIB`` MiB to the host (CID 2, port 5000: "up") and then receives
  ``MIB`` MiB on port 5001 ("down").  The test host's end is
  bench/vsock_peer.py: for kvmlite through the VM's Unix socket
  (``<socket>_5000``, ``CONNECT 5001``), for QEMU through AF_VSOCK.
  kvmlite and QEMU alternate ``ROUNDS`` times; medians.
* **The SDK** (kvmlite only): ``Sandbox.create()`` to the first
  ``commands.run("true")`` result (a cold boot), the median
  ``commands.run("true")`` round trip, the median round trip of one byte
  echoed by ``socat VSOCK-LISTEN,fork EXEC:cat`` in the same sandbox over
  a fresh stream (connect, ``CONNECT``, one byte each way: what every agent
  call pays besides the agent's own work), and a file written and read
  back through the agent.

Absolute numbers are low (the test host runs under TCG); the ratios mean
something: vsock throughput against QEMU, and run("true") against the bare
echo on the same VM.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

from bench.common import console_error, REPO, keep_console, number_or_failure, ratio, share_guest, tools_image

MIB = 128
ROUNDS = int(os.environ.get("KVMLITE_BENCH_ROUNDS", "2"))
SDK_ROUNDS = 30
FILE_MIB = 32
CID = 3
KSOCK = "/tmp/kvmlite-vsbench/vm.sock"
RESULT = re.compile(r"^@@VS (\S+) (\S+) (.+)$", re.M)
METRICS = ("up_MBps", "down_MBps")
SDK_METRICS = ("create_to_first_result_s", "run_true_ms", "echo_ms", "file_write_MBps", "file_read_MBps")


def guest_command() -> str:
    socat = "/mnt/ld-linux-x86-64.so.2 --library-path /mnt /mnt/socat"
    return (f"mount -o ro /dev/vda /mnt; "
            f"dd if=/dev/zero bs=1048576 count={MIB} 2>/dev/null | {socat} -u - VSOCK-CONNECT:2:5000; "
            f"echo \"@@VS $VMM guest_down_bytes $({socat} -u VSOCK-LISTEN:5001 - | wc -c)\"")


def _peer(*args: str) -> str:
    return f"{shlex.quote(sys.executable)} {REPO / 'bench' / 'vsock_peer.py'} {' '.join(args)}"


def kvmlite_run(tools: Path) -> str:
    cmd = "VMM=kvmlite; " + guest_command()
    return "\n".join([
        f"rm -f {KSOCK}*",
        f"{_peer('up', 'kvmlite', KSOCK + '_5000')} &",
        f"{_peer('down', 'kvmlite', f'hybrid:{KSOCK}:5001', str(MIB << 20))} &",
        f"timeout 600 $KVMLITE run -k \"$KERNEL\" -i \"$INITRD\" -m 512 -p quiet -n mode=none -d {tools},ro "
        f"--vsock {CID},socket={KSOCK} -- {shlex.quote(cmd)} </dev/null",
        "wait"])


def qemu_run(tools: Path) -> str:
    b64 = base64.b64encode(("VMM=qemu; " + guest_command()).encode()).decode()
    qemu = ("timeout 600 qemu-system-x86_64 -enable-kvm -M pc -cpu host -m 512 -smp 1 -display none "
            "-serial stdio -monitor none -nic none -no-reboot -nodefaults "
            f"-kernel \"$KERNEL\" -initrd \"$INITRD\" -append 'console=ttyS0 quiet panic=-1 kvmlite.cmd={b64}' "
            "-device isa-debug-exit,iobase=0x501,iosize=1 "
            f"-drive file={tools},if=none,id=d1,format=raw,readonly=on -device virtio-blk-pci,drive=d1 "
            f"-device vhost-vsock-pci,guest-cid={CID} </dev/null")
    return "\n".join([f"{_peer('up', 'qemu', 'vsock:5000')} &",
                      f"{_peer('down', 'qemu', f'vsock:{CID}:5001', str(MIB << 20))} &",
                      qemu, "wait"])


def script(tools: Path) -> str:
    rounds = [part for _ in range(ROUNDS) for part in (kvmlite_run(tools), qemu_run(tools))]
    return "\n".join([f"mkdir -p {KSOCK.rsplit('/', 1)[0]}",
                      "[ -c /dev/vhost-vsock ] || echo '@@VS qemu up_error no /dev/vhost-vsock in the test host'",
                      *rounds,
                      f"{_peer('sdk', str(SDK_ROUNDS), str(FILE_MIB))}"])


def parse(console: str) -> dict:
    console = console.replace("\r", "")
    values: dict[tuple[str, str], list[float]] = {}
    errors: dict[str, list[str]] = {}
    for vmm, metric, value in RESULT.findall(console):
        if metric.endswith("_error"):
            errors.setdefault(vmm, []).append(value)
            continue
        try:
            values.setdefault((vmm, metric), []).append(float(value))
        except ValueError:
            errors.setdefault(vmm, []).append(f"{metric}: {value}")
    out: dict = {}
    for metric in METRICS:
        for vmm in ("kvmlite", "qemu"):
            out[f"{vmm}_{metric}"] = number_or_failure(values.get((vmm, metric), []),
                                                       errors.get(vmm, []) or [vmm_error(console, vmm)])
        out[f"ratio_{metric}"] = ratio(out[f"kvmlite_{metric}"], out[f"qemu_{metric}"])
    for metric in SDK_METRICS:
        out[metric] = number_or_failure(values.get(("kvmlite", metric), []),
                                        errors.get("kvmlite", []) or ["the SDK part printed nothing"], digits=2)
    run, echo = out["run_true_ms"], out["echo_ms"]
    out["run_true_over_echo"] = ratio(run, echo)
    return out


def vmm_error(console: str, vmm: str) -> str:
    return console_error(console, vmm) or f"{vmm} printed no result and no error line"


def run() -> dict:
    from kvmlite.paths import cache_dir
    from tests.nested.linux import script_env
    from tests.nested.testhost import TestHost

    sandbox_guest, why = share_guest()     # the sandbox SDK part boots it
    if sandbox_guest is None:
        return {"error": why}
    host = TestHost.prepare()
    guest = host.files.guest
    with tempfile.TemporaryDirectory(prefix="kvmlite-vsbench-") as tmp:
        work = Path(tmp)
        tools = tools_image(work, ["socat"], "32M")
        env = (script_env(guest.kernel, guest.initrd)
               + f"export XDG_CACHE_HOME={shlex.quote(str(cache_dir().parent))}\n"
               + "export XDG_RUNTIME_DIR=$(mktemp -d /tmp/kr-XXXXXX)\n")
        result = host.run(env + script(tools), 3600, work)
        keep_console("vsock_nested", result.console)
        return {"what": f"virtio-vsock ({MIB} MiB each way, socat in the guest, median of {ROUNDS}) against QEMU "
                        f"vhost-vsock, and the sandbox SDK (median of {SDK_ROUNDS}), nested test host",
                **parse(result.console)}
