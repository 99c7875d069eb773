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

import json
import shlex
import sys

import pytest

from kvmlite.guest.setup import DefaultGuest
from kvmlite.paths import cache_dir

from .linux import hardware_kvm, run_linux_script
from .testhost import REPO, RunResult, TestHost

pytestmark = pytest.mark.nested
TIMEOUT = 1800


def _script() -> str:
    probe = shlex.quote(str(REPO / "tests" / "nested" / "sdk_probe.py"))
    return f"""
export XDG_CACHE_HOME={shlex.quote(str(cache_dir().parent))}
export XDG_RUNTIME_DIR=$(mktemp -d /tmp/kr-XXXXXX)
export KVMLITE_SANDBOX_SNAPSHOTS=$(mktemp -d /tmp/ks-XXXXXX) XDG_STATE_HOME=$(mktemp -d /tmp/kst-XXXXXX)
section sdk {shlex.quote(sys.executable)} {probe} "$TESTHOST_WORK"
"""


@pytest.fixture(scope="module")
def probe(request: pytest.FixtureRequest, share_guest: DefaultGuest,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The probe's records by check.  When the test host itself ends the run
    early (it stalled, or powered off or panicked in the middle: the
    section never ended), the records that did come are kept and asserted;
    the checks that never ran are expected failures naming the log."""
    host: TestHost | None = None if hardware_kvm() else request.getfixturevalue("testhost")
    result: RunResult = run_linux_script(host, _script(), TIMEOUT, tmp_path_factory.mktemp("sdk"))
    assert not result.timed_out, f"timed out after {TIMEOUT} s; {result.where()}"
    checks: dict[str, dict] = {}
    for line in result.console.replace("\r", "").splitlines():
        if line.startswith("@@SDK "):
            record = json.loads(line[len("@@SDK "):])
            checks[record["check"]] = record
    ended = "sdk" in result.sections
    checks["_where"] = {"where": result.where(), "ended": ended, "stalled": result.stalled,
                        "tail": result.console[-3000:]}
    return checks


# The emulated test host (QEMU TCG, nested SVM) now and then crashes an inner
# guest with a triple fault under load (BENCHMARKS.md, "Nested instability");
# a check that failed because its sandbox's guest did so is an expected
# failure of the environment, reported with the VMM's own line.  Any other
# error fails the test.
ENVIRONMENT_CRASH = "guest triple fault"


def _get(probe: dict[str, dict], name: str) -> dict:
    record = probe.get(name)
    where = probe["_where"]
    if record is None and not where["ended"]:
        pytest.xfail(f"{name}: never ran: the emulated test host ended the run early "
                     f"(stalled={where['stalled']}); {where['where']}")
    assert record is not None, f"no {name!r} result: {where}"
    if "error" in record and ENVIRONMENT_CRASH in record["error"]:
        pytest.xfail(f"{name}: the sandbox's guest crashed under the emulated test host: {record['error'][-300:]}")
    assert "error" not in record, f"{name}: {record['error']}\n{record.get('trace', '')}"
    return record


def test_sdk_create_lists_sandbox_with_metadata_and_deadline(probe: dict[str, dict]) -> None:
    r = _get(probe, "create")
    assert r["listed"] and r["state"] == "running"
    assert r["metadata"] == {"purpose": "nested-test"}
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
    assert r["processes"] == [] and r["runtime"] == [] and r["tmp"] == []
