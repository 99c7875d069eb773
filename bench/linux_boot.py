"""Linux boot to the init marker inside the nested test host: kvmlite and
QEMU (microvm, -cpu host, KVM) boot the same Debian cloud kernel and the
default guest's initramfs, which prints "kvmlite-init: ready" and runs
``true``.  Each VMM boots ``RUNS`` times in one test-host boot, after one
warm-up run each (the first start reads Python and the kernel over 9p).

Reported per VMM (medians, milliseconds of the test host's clock):
``marker_ms`` process start to the marker line (what a user waits for);
``exit_ms`` process start to VMM exit after the guest powered off.
"""

from __future__ import annotations

import re
import shlex
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, number_or_failure, ratio

RUNS = 5
MARKER = "kvmlite-init: ready"


def _commands(kernel: Path, initrd: Path) -> dict[str, list[str]]:
    append = "console=ttyS0 quiet panic=-1 kvmlite.cmd=dHJ1ZQ=="          # base64("true")
    qemu = ["qemu-system-x86_64", "-enable-kvm", "-M", "microvm", "-cpu", "host", "-m", "256", "-smp", "1",
            "-display", "none", "-serial", "stdio", "-monitor", "none", "-nic", "none", "-no-reboot",
            "-nodefaults", "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
            "-device", "isa-debug-exit,iobase=0x501,iosize=1"]
    ours = [sys.executable, "-m", "kvmlite", "run", "-k", str(kernel), "-i", str(initrd), "-m", "256",
            "-p", "quiet", "--", "true"]
    return {"qemu": qemu, "kvmlite": ours}


def script(kernel: Path, initrd: Path, runs: int = RUNS) -> str:
    lines = [f"export PYTHONPATH={shlex.quote(str(REPO))}"]
    timer = [sys.executable, str(REPO / "bench" / "marker_time.py")]
    for i in range(runs + 1):
        for name, cmd in _commands(kernel, initrd).items():
            label = name if i else f"{name}-warmup"
            lines.append(" ".join(shlex.quote(a) for a in [*timer, label, MARKER, "--", *cmd]))
    return "\n".join(lines)


def parse(console: str) -> dict:
    runs: dict[str, list[dict[str, int]]] = {}
    for m in re.finditer(r"BOOT name=(\S+) first_ms=(-?\d+) marker_ms=(-?\d+) exit_ms=(-?\d+) rc=(\d+)", console):
        name, first, marker, end, rc = m.groups()
        runs.setdefault(name, []).append({"first": int(first), "marker": int(marker), "exit": int(end), "rc": int(rc)})
    errors: dict[str, list[str]] = {}
    for m in re.finditer(r"^BOOTERR name=(\S+) (.*)$", console, re.M):
        errors.setdefault(m.group(1), []).append(m.group(2).strip())
    out: dict = {}
    for name in ("kvmlite", "qemu"):
        got = [r for r in runs.get(name, []) if r["marker"] >= 0]
        failures = errors.get(name, []) or [f"no {name} run reported (see the console log)"]
        out[f"{name}_marker_ms"] = number_or_failure([r["marker"] for r in got], failures, 0)
        out[f"{name}_exit_ms"] = number_or_failure([r["exit"] for r in got], failures, 0)
        out[f"{name}_runs"] = len(got)
    out["ratio_marker"] = ratio(out["kvmlite_marker_ms"], out["qemu_marker_ms"])
    return out


def run() -> dict:
    from tests.nested.testhost import TestHost

    host = TestHost.prepare()
    guest = host.files.guest
    with tempfile.TemporaryDirectory(prefix="kvmlite-bench-") as work:
        result = host.run(script(guest.kernel, guest.initrd), 1800, Path(work))
        out = {"what": "Linux boot to the init marker in the nested test host (ms, median)",
               "kernel": guest.kernel.name, **parse(result.console)}
    return out
