"""The SDK probes' ``check`` wrapper without a VM: a sandbox that died
during a check is reported as an error carrying its console (so that the
test host's retry sees an inner guest's crash), unless the check ends the
sandbox on purpose."""

from __future__ import annotations

import json

import pytest

from kvmlite import Sandbox

from . import sdk_probe
from .sdk_probe import check
from .testhost import GUEST_CRASH, PROBE_HUNG, SCRIPT_PREAMBLE


class DeadSandbox(Sandbox):
    """A sandbox whose VMM already exited after a guest crash."""

    def __init__(self) -> None:      # no VM
        self._proc = None

    def is_running(self) -> bool:
        return False

    def _console_tail(self) -> str:
        return f"kvmlite: error: {GUEST_CRASH} on vCPU 0"


def _records(out: str) -> list[dict]:
    return [json.loads(line[len("@@SDK "):]) for line in out.splitlines() if line.startswith("@@SDK ")]


def test_check_reports_a_sandbox_that_ended_with_its_console(capsys: pytest.CaptureFixture[str]) -> None:
    check("exec")(lambda sb: {"rc": 1})(DeadSandbox())
    (found,) = _records(capsys.readouterr().out)
    assert found["check"] == "exec" and "ended during the check" in found["error"]
    assert GUEST_CRASH in found["error"] and "'rc': 1" in found["error"]


def test_check_that_ends_its_sandbox_on_purpose_is_a_record(capsys: pytest.CaptureFixture[str]) -> None:
    check("deadline", ends_sandbox=True)(lambda sb: {"running": False})(DeadSandbox())
    (found,) = _records(capsys.readouterr().out)
    assert found["running"] is False and "error" not in found


def test_check_that_hangs_is_reported_with_stacks_and_ends_the_probe() -> None:
    # Arrange: a check that never returns, with a one-second limit
    import subprocess
    import sys

    from .testhost import REPO

    program = ("import time\nfrom tests.nested import sdk_probe\n"
               "sdk_probe._kill_sandboxes = lambda: print('killed the sandboxes')\n"
               "def stuck_in_agent_call(): time.sleep(60)\n"
               "sdk_probe.check('files', limit=1)(lambda: stuck_in_agent_call())()\nprint('went on')\n")
    # Act
    proc = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=30)
    # Assert: the probe ended at once with the check's error and where it hung
    (found,) = _records(proc.stdout)
    assert proc.returncode == 3 and "went on" not in proc.stdout and "killed the sandboxes" in proc.stdout
    assert found["check"] == "files" and found["error"].startswith("ProbeTimeout: the check did not finish in 1 s")
    assert "stuck_in_agent_call" in found["trace"]
    # retried_section runs a step that printed it again
    assert PROBE_HUNG == sdk_probe.PROBE_HUNG and f'-e "{PROBE_HUNG}"' in SCRIPT_PREAMBLE
