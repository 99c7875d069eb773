"""Helpers shared by the benchmarks: running a VMM as a subprocess and
timing the lines its guest prints."""

from __future__ import annotations

import functools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QEMU = "qemu-system-x86_64"
# Tried in order: -cpu host where it runs (hardware KVM, the nested test
# host); on a PVM-based /dev/kvm QEMU aborts under it with "failed to set
# MSR 0x10a" (IA32_ARCH_CAPABILITIES), and runs without that MSR.
QEMU_CPU_MODELS = ("host", "host,-arch-capabilities")


@dataclass
class Timed:
    """Lines a process printed, each with the time it arrived."""

    start: float
    lines: list[tuple[float, bytes]] = field(default_factory=list)
    first_byte: float | None = None
    returncode: int | None = None
    stderr: str = ""

    def failure(self, name: str) -> str:
        """One line saying how the run ended, with the process's own error."""
        tail = self.stderr or b"\n".join(line for _t, line in self.lines[-5:]).decode(errors="replace")
        return f"{name} exited with status {self.returncode}: {error_line(tail)}"

    def at(self, prefix: bytes) -> float | None:
        for t, line in self.lines:
            if line.startswith(prefix):
                return t
        return None


def kvmlite_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvmlite", "run", *args]


def error_line(text: str) -> str:
    """The line of a process's output that says what went wrong: the first
    naming an error (QEMU prints ``qemu-system-x86_64: ... error ...``),
    else the last non-empty one."""
    lines = [line.strip() for line in text.replace("\r", "").splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() or "failed" in line.lower():
            return line
    return lines[-1] if lines else "(no output)"


@functools.cache
def qemu_cpu() -> str:
    """The first of :data:`QEMU_CPU_MODELS` QEMU starts a VM with on this
    machine's /dev/kvm; :class:`BaselineError` with QEMU's own error line when none does."""
    errors = []
    for model in QEMU_CPU_MODELS:
        error = _qemu_starts(model)
        if error is None:
            return model
        errors.append(f"-cpu {model}: {error}")
    raise BaselineError(f"{QEMU} cannot start a VM here: " + "; ".join(errors))


def _qemu_starts(model: str) -> str | None:
    """None when QEMU creates and resets its vCPU with ``-cpu model`` (it
    sets the vCPU's MSRs at reset, before ``-S`` holds it), else its error."""
    cmd = [QEMU, "-enable-kvm", "-M", "microvm", "-cpu", model, "-m", "16", "-nodefaults", "-display", "none",
           "-S", "-monitor", "stdio"]
    try:
        proc = subprocess.run(cmd, input=b"quit\n", capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode == 0:
        return None
    return f"status {proc.returncode}: {error_line(proc.stderr.decode(errors='replace'))}"


class BaselineError(RuntimeError):
    """A VMM the benchmark compares against cannot run; the message is its own error."""


def number_or_failure(values: list[float], failures: list[str], digits: int = 1) -> float | str:
    """The median of ``values``, or ``"failed: <the first failure>"`` when no run gave one."""
    if values:
        return round(statistics.median(values), digits)
    return "failed: " + (failures[0] if failures else "no run gave a result")


def ratio(ours: float | str, theirs: float | str, digits: int = 2) -> float | str:
    """ours / theirs, or a sentence naming the side that has no number."""
    if isinstance(ours, str):
        return f"none: kvmlite {ours}"
    if isinstance(theirs, str):
        return f"none: the baseline {theirs}"
    if theirs == 0:
        return "none: the baseline measured 0"
    return round(ours / theirs, digits)


def qemu_cmd(kernel: Path, append: str, machine: str = "microvm", cpu: str | None = None) -> list[str]:
    """QEMU with KVM booting ``kernel``; ``cpu`` defaults to :func:`qemu_cpu`."""
    return [QEMU, "-enable-kvm", "-M", machine, "-cpu", cpu or qemu_cpu(), "-m", "64", "-nographic", "-nodefaults",
            "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0x501,iosize=1",
            "-kernel", str(kernel), "-append", append]


def run_timed(cmd: list[str], timeout: float = 120.0) -> Timed:
    """Run ``cmd``; timestamp its first stdout byte and every line."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    errors = tempfile.TemporaryFile()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
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
    errors.seek(0)
    timed.stderr = errors.read().decode(errors="replace")
    errors.close()
    return timed


def have_qemu() -> bool:
    return shutil.which(QEMU) is not None



def measure(name: str, make_cmd, value, repeat: int, digits: int = 1) -> float | str:
    """Run ``make_cmd()`` ``repeat`` times; ``value(timed)`` gives a number
    or None.  The median, or the first failure's own error line
    (:class:`BaselineError` from ``make_cmd`` included)."""
    values: list[float] = []
    failures: list[str] = []
    for _ in range(repeat):
        try:
            cmd = make_cmd()
        except BaselineError as exc:
            return f"failed: {exc}"
        timed = run_timed(cmd)
        got = value(timed)
        if got is None:
            failures.append(timed.failure(name))
        else:
            values.append(got)
    return number_or_failure(values, failures, digits)


def keep_console(name: str, console: str) -> Path:
    """Save a nested benchmark's test-host console beside the results
    (bench/results/NAME-console.log, not committed), for when a side fails."""
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name}-console.log"
    path.write_text(console)
    return path


def tools_image(work: Path, programs: list[str], size: str) -> Path:
    """An ext4 image (``work/tools.img``) holding the host's ``programs``,
    every library they link and the dynamic loader, flat, for a guest
    without them: run as ``/mnt/ld-linux-x86-64.so.2 --library-path /mnt
    /mnt/PROGRAM`` once mounted at /mnt.  RuntimeError naming the Debian
    package's program when one is missing."""
    tools = work / "tools"
    tools.mkdir()
    for name in programs:
        binary = shutil.which(name)
        if binary is None:
            raise RuntimeError(f"{name} is not installed: apt-get install {name}")
        shutil.copy(binary, tools / name)
        ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        for lib in re.findall(r"(/\S+\.so[.\d]*)", ldd):
            shutil.copy(lib, tools / Path(lib).name)
    image = work / "tools.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tools), str(image), size], check=True)
    return image


def console_error(console: str, vmm: str, extra: tuple[str, ...] = ()) -> str | None:
    """A VMM's own error line on a nested benchmark's console (QEMU's start
    with its program name, kvmlite's with ``kvmlite:``; ``extra`` prefixes
    count too), or None."""
    prefixes = ("qemu-system-x86_64:" if vmm.startswith("qemu") else "kvmlite:", *extra)
    lines = [line for line in console.splitlines()
             if line.strip().startswith(prefixes) and "warning:" not in line]      # warnings are not why
    return error_line("\n".join(lines)) if lines else None


def share_guest() -> tuple[object | None, str]:
    """The default guest that mounts shares (the sandbox's), brought up to
    date as ``kvmlite setup`` does (idempotent: only what changed is
    rebuilt); (None, why) when there is none."""
    from kvmlite.errors import KvmliteError
    from kvmlite.guest.setup import default_guest, setup_default_guest

    try:
        result = setup_default_guest()
    except KvmliteError as exc:
        return None, f"cannot prepare the default guest: {exc}"
    guest = default_guest(shares=True)
    if guest is None:
        return None, f"no default guest can mount shares: {result.share_error}"
    return guest, ""
