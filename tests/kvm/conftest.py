"""Shared fixtures for the tests that run purpose-built guests under the
machine's real /dev/kvm.

* ``kvm`` skips the test, saying exactly why, when /dev/kvm cannot be opened
  read-write;
* ``guest`` builds a guest from tests/guests/src (skipping when gcc, ld,
  objcopy or nm are missing) and returns its path: ``guest("smp")`` for a
  bzImage, ``guest("bootinfo-pvh")`` for a PVH ELF, ``guest("virtio")`` for
  a 64-bit PVH ELF;
* ``kvmlite`` runs ``python3 -m kvmlite ARGS...`` as a subprocess with a
  timeout and returns a :class:`Run` (status, stdout, stderr, seconds);
* ``LiveKvmlite`` is the same run kept interactive: stdin is a pipe, stdout
  is read on a thread with the arrival time of every line, for tests that
  feed input, time the guest or signal kvmlite while it runs.

Guests here run slowly: on this machine's PVM-based KVM, guest kernel-mode
code is emulated at ~350-400 ns an instruction, so every run gets a
generous timeout.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.guests import build

REPO = Path(__file__).resolve().parents[2]
KVM_PATH = "/dev/kvm"
DEFAULT_TIMEOUT = 120.0


def kvm_unavailable_reason(path: str = KVM_PATH) -> str | None:
    """Why ``path`` cannot be used, or None when it opens read-write."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        why = {errno.ENOENT: "does not exist (no KVM module loaded?)",
               errno.EACCES: "permission denied (not root, not in group kvm?)"}.get(exc.errno, exc.strerror)
        return f"cannot open {path}: {why}"
    os.close(fd)
    return None


@pytest.fixture(scope="session")
def kvm() -> str:
    reason = kvm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    return KVM_PATH


@pytest.fixture(scope="session")
def guest() -> Callable[[str], Path]:
    """``guest(name)``: build (or reuse) a test guest and return its path."""
    missing = build.missing_tools()
    if missing:
        pytest.skip(f"cannot build test guests: {', '.join(missing)} not found in PATH")

    def _build(name: str) -> Path:
        if name in build.BZIMAGE_GUESTS:
            return build.bzimage(name)
        if name in build.PVH64_GUESTS:
            return build.pvh64(name)
        return build.elf32(name)

    return _build


@dataclass(frozen=True)
class Run:
    status: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:          # shown by pytest when an assertion fails
        return (f"exit status {self.status} after {self.seconds:.1f} s\n--- stdout ---\n{self.stdout}"
                f"\n--- stderr ---\n{self.stderr}")


def kvmlite_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvmlite", *args]


def kvmlite_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_kvmlite(*args: str, timeout: float = DEFAULT_TIMEOUT, input: bytes | None = None) -> Run:
    """Run ``python3 -m kvmlite ARGS`` to completion.  A run that outlives
    ``timeout`` is killed and fails the test with whatever it printed."""
    start = time.monotonic()
    try:
        proc = subprocess.run(kvmlite_command(*args), cwd=REPO, env=kvmlite_env(), input=input or b"",
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        err = (exc.stderr or b"").decode(errors="replace")
        pytest.fail(f"kvmlite {' '.join(args)} still running after {timeout:.0f} s\n"
                    f"--- stdout ---\n{out}\n--- stderr ---\n{err}")
    return Run(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
               time.monotonic() - start)


@pytest.fixture
def kvmlite(kvm: str) -> Callable[..., Run]:
    return run_kvmlite


class LiveKvmlite:
    """``python3 -m kvmlite ARGS`` running in the background."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.started = time.monotonic()
        self._stderr = tempfile.TemporaryFile()       # a file, so a chatty stderr cannot block kvmlite
        self.proc = subprocess.Popen(kvmlite_command(*args), cwd=REPO, env=kvmlite_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr)
        self.out = bytearray()
        self.lines: list[tuple[float, str]] = []      # (time.monotonic() at arrival, line)
        self._partial = bytearray()
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(4096):
            now = time.monotonic()
            with self._cond:
                self.out += chunk
                self._partial += chunk
                *done, rest = self._partial.split(b"\n")
                self.lines += [(now, line.decode(errors="replace")) for line in done]
                self._partial = bytearray(rest)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return self.out.decode(errors="replace")

    def wait_for(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> float:
        """Block until ``text`` appears on stdout; return when its line arrived."""
        def seen() -> bool:  # a whole line, not a partial chunk, must hold the text
            return any(text in line for _t, line in self.lines)

        with self._cond:
            if not self._cond.wait_for(lambda: seen() or self._eof, timeout) or not seen():
                self.kill()
                pytest.fail(f"no {text!r} from kvmlite {' '.join(self.args)} within {timeout:.0f} s\n"
                            f"{self._finish_run()}")
            return self.arrival(text)

    def arrival(self, text: str) -> float:
        """When the first line containing ``text`` arrived (inf if not yet)."""
        with self._cond:
            return next((t for t, line in self.lines if text in line), float("inf"))

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def finish(self, timeout: float = DEFAULT_TIMEOUT) -> Run:
        """Wait for kvmlite to exit (killing it and failing after ``timeout``)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"kvmlite {' '.join(self.args)} still running after {timeout:.0f} s\n"
                        f"{self._finish_run()}")
        return self._finish_run()

    def _finish_run(self) -> Run:
        self._reader.join(10)
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace")
        return Run(self.proc.returncode if self.proc.returncode is not None else -1, self.text(), err,
                   time.monotonic() - self.started)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def fields(text: str, prefix: str) -> dict[str, str]:
    """``key=value`` words of the first line starting with ``prefix``."""
    for line in text.splitlines():
        if line.startswith(prefix):
            return dict(w.split("=", 1) for w in line[len(prefix):].split() if "=" in w)
    raise AssertionError(f"no line starting with {prefix!r} in:\n{text}")


def assert_one_line_error(run: Run) -> None:
    """kvmlite's CLI rule for failures: one line on stderr, no traceback."""
    assert "Traceback" not in run.stderr, run
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run
    assert lines[0].startswith("kvmlite"), run
