"""Helpers shared by the benchmarks: running a VMM as a subprocess and
timing the lines its guest prints."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QEMU = "qemu-system-x86_64"


@dataclass
class Timed:
    """Lines a process printed, each with the time it arrived."""

    start: float
    lines: list[tuple[float, bytes]] = field(default_factory=list)
    first_byte: float | None = None
    returncode: int | None = None

    def at(self, prefix: bytes) -> float | None:
        for t, line in self.lines:
            if line.startswith(prefix):
                return t
        return None


def kvmlite_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvmlite", "run", *args]


def qemu_cmd(kernel: Path, append: str, machine: str = "microvm") -> list[str]:
    return [QEMU, "-enable-kvm", "-M", machine, "-cpu", "host", "-m", "64", "-nographic", "-nodefaults",
            "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0x501,iosize=1",
            "-kernel", str(kernel), "-append", append]


def run_timed(cmd: list[str], timeout: float = 120.0) -> Timed:
    """Run ``cmd``; timestamp its first stdout byte and every line."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, bufsize=0)
    timed = Timed(start)
    assert proc.stdout is not None
    buf = b""
    deadline = start + timeout
    while time.monotonic() < deadline:
        chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else os.read(proc.stdout.fileno(), 65536)
        now = time.monotonic()
        if not chunk:
            break
        if timed.first_byte is None:
            timed.first_byte = now
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            timed.lines.append((now, line.strip(b"\r")))
    try:
        timed.returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        timed.returncode = proc.wait()
    return timed


def have_qemu() -> bool:
    return shutil.which(QEMU) is not None


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
