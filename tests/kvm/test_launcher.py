"""The SDK's warm launcher runs real VMMs on /dev/kvm: a forked VMM runs
its guest in a session of its own, with the request's environment,
working directory and console, under the name ``kvmlite-vmm``; it reports
the guest's exit status and a signal's; a VMM outlives its launcher and
can still be waited for and killed."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlite.sdk.launcher import PROCESS_NAME, Launcher
from tests.procs import gone_or_zombie

from .conftest import kvmlite_env


@pytest.fixture
def own() -> Iterator[Launcher]:
    one = Launcher()
    yield one
    one.close()


def wait_console(console, text: str, timeout: float = 60) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        console.seek(0)
        out = console.read().decode(errors="replace")
        if text in out:
            return out
        time.sleep(0.05)
    pytest.fail(f"{text!r} not on the console within {timeout} s: {out!r}")


def test_launched_vmm_runs_guest_with_request_env_cwd_session_and_name(kvm, guest, own, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with tempfile.TemporaryFile() as console:
        env = dict(kvmlite_env(), KVMLITE_LAUNCH_MARK="mark-1")
        proc = own.start(["run", "-k", str(guest("lifecycle")), "-p", "action=spin"], console, env, "t")
        try:
            wait_console(console, "lifecycle: spinning")
            assert Path(f"/proc/{proc.pid}/comm").read_bytes().strip() == PROCESS_NAME
            assert os.readlink(f"/proc/{proc.pid}/cwd") == str(tmp_path)
            assert b"KVMLITE_LAUNCH_MARK=mark-1" in Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
            assert os.getsid(proc.pid) == proc.pid and os.getsid(proc.pid) != os.getsid(0)
            assert proc.poll() is None
            proc.terminate()
            assert proc.wait(timeout=60) == 0           # SIGTERM stops the guest: the VMM's status
        finally:
            proc.kill()


@pytest.mark.parametrize("code", [5, 77])
def test_launched_vmm_reports_the_guests_exit_status(kvm, guest, own, code: int) -> None:
    with tempfile.TemporaryFile() as console:
        proc = own.start(["run", "-k", str(guest("lifecycle")), "-p", f"action=exit code={code}"],
                         console, kvmlite_env(), "t")
        assert proc.wait(timeout=60) == code
        assert "lifecycle: exit" in wait_console(console, "lifecycle: exit")


def test_vmm_outlives_its_launcher_and_is_still_killed_and_waited_for(kvm, guest, own) -> None:
    with tempfile.TemporaryFile() as console:
        proc = own.start(["run", "-k", str(guest("lifecycle")), "-p", "action=halt"], console, kvmlite_env(), "t")
        try:
            wait_console(console, "lifecycle: halted")
            assert own._proc is not None
            own._proc.send_signal(signal.SIGKILL)
            own._proc.wait(timeout=30)
            time.sleep(0.3)
            assert proc.poll() is None and os.path.exists(f"/proc/{proc.pid}")
            proc.kill()
            assert proc.wait(timeout=30) == 255        # its status died with the launcher
            assert gone_or_zombie(proc.pid)
        finally:
            proc.kill()
