"""The SDK probes' ``check`` wrapper without a VM: a sandbox that died
during a check is reported as an error carrying its console (so that the
test host's retry sees an inner guest's crash), unless the check ends the
sandbox on purpose."""

from __future__ import annotations

import json

import pytest

from kvmlite import Sandbox

from .sdk_probe import check
from .testhost import GUEST_CRASH


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
