"""The sandbox SDK end to end with real Linux (issue: vsock, agent and SDK,
"How it is shown"): tests/nested/sdk_probe.py runs in the nested test host
(or here, on hardware KVM) with ``from kvmlite import Sandbox``; each
sandbox is ``kvmlite sandbox --agent`` booting the 9p-capable default guest,
its agent reached over virtio-vsock.  One boot, two sandboxes:

* the first takes 100 commands in a row and 8 in parallel, keeps stdout
  and stderr apart, moves a 64 MiB file in and back out (SHA-256 on both
  sides and in the guest), kills a ``sleep 1000`` at the command's
  timeout, runs and kills a background command, answers ``kvmlite exec``,
  and is then killed while a call is pending, which must raise at once;
* the second is stopped by its own deadline (``set_timeout(3)``), its
  pending call raising too.

Afterwards no VMM process, runtime socket or directory is left.
"""

from __future__ import annotations

import pytest

from kvmlite.guest.setup import DefaultGuest

from .sdk_records import record, run_probe

pytestmark = pytest.mark.nested


@pytest.fixture(scope="module")
def probe(request: pytest.FixtureRequest, share_guest: DefaultGuest,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    return run_probe(request, "sdk_probe.py", tmp_path_factory.mktemp("sdk"))


_get = record


def test_sdk_create_lists_sandbox_with_metadata_and_deadline(probe: dict[str, dict]) -> None:
    r = _get(probe, "create")
    assert r["listed"] and r["state"] == "running"
    assert r["metadata"] == {"purpose": "nested-test"}
    assert r["vmm_name"] == "kvmlite-vmm"          # forked by the SDK's warm launcher
    assert 600 < r["end_in"] <= 900           # 900 s from its start; the second sandbox booted since
    print(f"sandbox created in {r['created_in']} s")


def test_sdk_hundred_commands_in_a_row_outputs_and_exit_codes(probe: dict[str, dict]) -> None:
    r = _get(probe, "serial")
    assert r["wrong"] == [] and r["codes"] == [0, 1, 7, 255]


def test_sdk_eight_commands_in_parallel(probe: dict[str, dict]) -> None:
    r = _get(probe, "parallel")
    assert r["results"] == [[f"par-{i}\n", i] for i in range(8)]
    assert r["elapsed"] < 8          # they ran at once: 8 one-second sleeps in a row would take more


def test_sdk_stdout_stderr_apart_streamed_env_cwd(probe: dict[str, dict]) -> None:
    r = _get(probe, "streams")
    assert r["stdout"] == "out1\nout2\n\ufffd\ufffdbad\n"       # not UTF-8: replaced, not broken
    assert r["stderr"] == "err1\nerr2\n"
    assert r["streamed"] == r["stdout"]
    lines = r["env"].splitlines()
    assert lines[:2] == ["hello sdk-env", "/tmp"] and lines[2].isdigit()


def test_sdk_64mib_file_in_and_out_same_checksum(probe: dict[str, dict]) -> None:
    r = _get(probe, "files")
    assert r["sha_sent"] == r["sha_back"] == r["sha_guest"] and r["bytes_back"] == 64 << 20
    assert r["names"] == ["f.txt"] and r["moved"] == "text"
    assert r["exists_after_remove"] is False and r["missing"] == "SandboxFileNotFoundError"
    print(f"files: write {r['write_MBps']} MB/s, read {r['read_MBps']} MB/s")


def test_sdk_command_timeout_kills_sleep(probe: dict[str, dict]) -> None:
    r = _get(probe, "timeout")
    assert r["raised"] == "CommandTimeoutError" and r["elapsed"] < 30
    assert r["sleeps_left"] == "0"


def test_sdk_background_handle_listed_killed(probe: dict[str, dict]) -> None:
    r = _get(probe, "background")
    assert r["pid_listed"] and r["killed"] and r["stdout"] == "started\n" and r["signal"] == 9


def test_kvmlite_exec_runs_in_running_sandbox_status_and_streams(probe: dict[str, dict]) -> None:
    r = _get(probe, "exec")
    assert (r["rc"], r["stdout"], r["stderr"]) == (3, "via-exec\n", "to-err\n")


def test_sdk_kill_makes_pending_call_raise_at_once(probe: dict[str, dict]) -> None:
    r = _get(probe, "kill_pending")
    assert r["killed"] and not r["alive"] and not r["running"]
    assert r["raised"] == "AgentConnectionError" and r["raise_after_kill"] < 30


def test_sdk_sandbox_killed_at_its_deadline(probe: dict[str, dict]) -> None:
    r = _get(probe, "deadline")
    assert not r["running"] and 2 < r["ended_after"] < 30
    assert r["raised"] == "AgentConnectionError"


def test_sdk_leaves_no_process_socket_or_file(probe: dict[str, dict]) -> None:
    r = _get(probe, "leftovers")
    assert r["vmm_pids"] == 2 and r["processes"] == [] and r["runtime"] == [] and r["tmp"] == []
