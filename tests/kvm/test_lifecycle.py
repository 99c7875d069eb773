"""How a VM ends, and what ``kvmlite run`` exits with.

The lifecycle guest (tests/guests/src/lifecycle) resets through the i8042,
triple-faults, writes a status to the exit port, or keeps running (busy or
halted) until the test sends SIGTERM to kvmlite.  Exit statuses are
kvmlite/vmm/exitcodes.py's: 3 reset, 4 crash, N the guest's own status,
and a stop from outside maps like a poweroff.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import termios
import threading
import time

import pytest

from kvmlite.vmm.exitcodes import DEFAULT_CODES, EXIT_CRASH, EXIT_RESET, EndReason
from tests.kvm.conftest import REPO, LiveKvmlite, kvmlite_command, kvmlite_env

pytestmark = pytest.mark.kvm

PROMPT_EXIT_S = 10.0        # SIGTERM to exit; generous for this slow host


def lifecycle(kvmlite, guest, params: str):
    return kvmlite("run", "-k", str(guest("lifecycle")), "-p", params)


def test_i8042_reset_exits_3(kvmlite, guest) -> None:
    run = lifecycle(kvmlite, guest, "action=reset")
    assert "lifecycle: reset" in run.stdout, run
    assert run.status == EXIT_RESET, run
    assert "Traceback" not in run.stderr, run


@pytest.mark.parametrize("fault", ["ud", "pf", "de"])
def test_triple_fault_exits_4_and_says_so(kvmlite, guest, fault: str) -> None:
    run = lifecycle(kvmlite, guest, f"action=triple fault={fault}")
    assert "lifecycle: triple fault" in run.stdout, run
    assert run.status == EXIT_CRASH, run
    assert "triple fault" in run.stderr.lower(), run
    assert "Traceback" not in run.stderr, run


@pytest.mark.parametrize("code", [5, 77, 255])
def test_exit_port_status_becomes_the_exit_status(kvmlite, guest, code: int) -> None:
    run = lifecycle(kvmlite, guest, f"action=exit code={code}")
    assert "lifecycle: exit" in run.stdout, run
    assert run.status == code, run
    assert run.stderr == "", run


@pytest.mark.parametrize("action, marker", [("spin", "spinning"), ("halt", "halted")])
def test_sigterm_stops_a_running_guest_promptly(kvm, guest, action: str, marker: str) -> None:
    live = LiveKvmlite("run", "-k", str(guest("lifecycle")), "-p", f"action={action}")
    live.wait_for(f"lifecycle: {marker}")
    time.sleep(0.5)                     # let the vCPU get back into KVM_RUN
    sent = time.monotonic()
    live.proc.send_signal(signal.SIGTERM)
    run = live.finish(timeout=60)
    took = time.monotonic() - sent
    assert took < PROMPT_EXIT_S, f"exit took {took:.1f} s\n{run}"
    assert run.status == DEFAULT_CODES[EndReason.STOPPED], run
    assert "Traceback" not in run.stderr, run


class PtyReader(threading.Thread):
    """Drains a pty master so kvmlite never blocks writing to its terminal."""

    def __init__(self, master: int) -> None:
        super().__init__(daemon=True)
        self.master, self.data, self.stop = master, bytearray(), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    return
                if not chunk:
                    return
                self.data += chunk

    def wait_for(self, text: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while text not in self.data and time.monotonic() < deadline:
            time.sleep(0.05)
        return text in self.data


def test_sigterm_on_a_terminal_restores_its_mode(kvm, guest) -> None:
    """With a terminal on stdin kvmlite switches it to raw mode (the Ctrl-A
    console escapes need every key as typed); however it ends, the
    terminal must get its original attributes back."""
    master, slave = os.openpty()
    reader = PtyReader(master)
    reader.start()
    try:
        before = termios.tcgetattr(slave)
        proc = subprocess.Popen(kvmlite_command("run", "-k", str(guest("lifecycle")), "-p", "action=spin"),
                                cwd=REPO, env=kvmlite_env(), stdin=slave, stdout=slave, stderr=slave,
                                start_new_session=True)
        try:
            assert reader.wait_for(b"lifecycle: spinning", 120), reader.data.decode(errors="replace")
            during = termios.tcgetattr(slave)
            proc.send_signal(signal.SIGTERM)
            proc.wait(PROMPT_EXIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        after = termios.tcgetattr(slave)
    finally:
        reader.stop.set()
        reader.join(2)
        os.close(slave)
        os.close(master)
    output = reader.data.decode(errors="replace")
    assert not during[3] & (termios.ICANON | termios.ECHO), f"terminal not raw while running\n{output}"
    assert after == before, f"terminal attributes not restored\n{output}"
    assert proc.returncode == DEFAULT_CODES[EndReason.STOPPED], output
    assert "Traceback" not in output
