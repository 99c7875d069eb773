"""The SDK's warm launcher without a VM: it forks ``kvmlite ARGS`` with the
request's environment, working directory and console, reports the exit
status, and when it cannot run the SDK starts VMMs the plain way
(tests/kvm/test_launcher.py runs guests through it)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlite import __version__
from kvmlite.sdk import launcher
from kvmlite.sdk.launcher import LaunchedProcess, Launcher, start_vmm

REPO = Path(__file__).resolve().parents[3]


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), **extra)


@pytest.fixture
def own() -> Iterator[Launcher]:
    one = Launcher()
    yield one
    one.close()


def console_text(console) -> str:  # type: ignore[no-untyped-def]
    console.seek(0)
    return console.read().decode()


def test_launched_command_output_and_status(own: Launcher) -> None:
    with tempfile.TemporaryFile() as console:
        proc = own.start(["version"], console, env(), "t")
        assert isinstance(proc, LaunchedProcess) and proc.pid > 0
        assert proc.wait(timeout=30) == 0 and proc.poll() == 0
        assert console_text(console) == f"kvmlite version {__version__}\n"


def test_launched_command_error_status_and_line(own: Launcher) -> None:
    with tempfile.TemporaryFile() as console:
        proc = own.start(["nosuch"], console, env(), "t")
        assert proc.wait(timeout=30) == 2
        assert "'nosuch' is not a kvmlite command" in console_text(console)


def test_one_launcher_serves_many_starts(own: Launcher, tmp_path: Path) -> None:
    procs = []
    for i in range(3):
        work = tmp_path / f"w{i}"
        work.mkdir()
        console = tempfile.TemporaryFile()
        old = os.getcwd()
        os.chdir(work)
        try:
            procs.append((own.start(["setup", "--help"], console, env(XDG_CACHE_HOME=str(work / "c")), "t"),
                          console, work))
        finally:
            os.chdir(old)
    launcher_pid = own._proc.pid if own._proc else None
    for proc, console, work in procs:
        assert proc.wait(timeout=30) == 0
        assert proc.pid != launcher_pid
        console.close()
    assert own._proc is not None and own._proc.pid == launcher_pid and own._proc.poll() is None


def test_wait_times_out_like_popen(own: Launcher) -> None:
    with tempfile.TemporaryFile() as console:
        proc = own.start(["version"], console, env(), "t")
        proc.wait(timeout=30)
        proc.kill()                          # ended: nothing to signal, no error
        assert proc.wait(timeout=0) == 0


def test_plain_start_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(launcher.ENV_SWITCH, "0")
    with tempfile.TemporaryFile() as console:
        proc = start_vmm(["version"], console, env(), "t")
        assert isinstance(proc, subprocess.Popen)
        assert proc.wait(timeout=60) == 0
        assert "kvmlite version" in console_text(console)


def test_launcher_that_cannot_start_falls_back_to_plain_start(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = Launcher()
    monkeypatch.setattr(launcher, "_LAUNCHER", broken)
    monkeypatch.setattr(launcher, "SERVE", "import sys; sys.exit(3)")
    with tempfile.TemporaryFile() as console:
        proc = start_vmm(["version"], console, env(), "t")
        assert isinstance(proc, subprocess.Popen) and broken.broken
        assert proc.wait(timeout=60) == 0
        assert "kvmlite version" in console_text(console)
        again = start_vmm(["version"], console, env(), "t")      # not tried again
        assert isinstance(again, subprocess.Popen)
        again.wait(timeout=60)


def test_launcher_ends_when_the_sdk_closes_its_socket(own: Launcher) -> None:
    with tempfile.TemporaryFile() as console:
        own.start(["version"], console, env(), "t").wait(timeout=30)
    proc = own._proc
    assert proc is not None
    own._sock.close()                                           # type: ignore[union-attr]
    own._sock = None
    assert proc.wait(timeout=30) == 0


def test_a_malformed_request_is_dropped_and_the_launcher_serves_on(own: Launcher) -> None:
    with tempfile.TemporaryFile() as console:
        own.start(["version"], console, env(), "t").wait(timeout=30)
        assert own._sock is not None
        own._sock.send(b'{"argv": ["version"]}')                # no descriptors: dropped
        own._sock.send(b"\xff not json")
        proc = own.start(["version"], console, env(), "t")
        assert proc.wait(timeout=30) == 0


def test_console_file_takes_a_vmms_writes_at_its_end_while_the_sdk_reads_its_tail(own: Launcher) -> None:
    from kvmlite.sdk.sandbox import _console_file

    console = _console_file()
    with console:
        console.write(b"x" * 10000)
        console.flush()
        console.seek(100)                   # the SDK reading a tail (same open file as the VMM's stdout)
        proc = own.start(["version"], console, env(), "t")
        assert proc.wait(timeout=30) == 0
        console.seek(0)
        text = console.read()
        assert text[:10000] == b"x" * 10000 and text[10000:] == f"kvmlite version {__version__}\n".encode()


@pytest.mark.parametrize("stream, status", [(b"exit -9\n", -9), (b"exit 3\n", 3), (b"exit nonsense\n", 255),
                                            (b"", 255)])
def test_status_stream_read_as_the_exit_status_or_unknown_once_the_process_ends(stream: bytes, status: int) -> None:
    import socket

    child = subprocess.Popen(["sleep", "0.3"])
    ours, theirs = socket.socketpair()
    ours.sendall(stream)
    ours.close()
    proc = LaunchedProcess(theirs, child.pid, "t")
    if not stream.startswith(b"exit -") and status == 255:
        with pytest.raises(subprocess.TimeoutExpired):      # unknown: the process itself still runs
            proc.wait(timeout=0.05)
    assert proc.wait(timeout=30) == status
    proc.kill()                                             # ended: nothing signalled, no error
    child.wait()
