"""``kvmlite sandbox`` with a real Linux guest (the 9p-capable default
guest) in one test-host boot: a host program (python3) runs in the VM and
its status is kvmlite's; a file it writes in the current directory is on
the host afterwards, while a write to /usr stays inside the VM; /root and
/etc/shadow do not exist for it."""

from __future__ import annotations

import os
import shlex

import pytest

from kvmlite.guest.setup import DefaultGuest
from kvmlite.paths import cache_dir

from .linux import hardware_kvm, run_linux_script
from .testhost import RunResult, TestHost

pytestmark = pytest.mark.nested
TIMEOUT = 1500
PROBE = ("echo from-the-sandbox > made-here.txt; "
         "echo in-vm > /usr/kvmlite-sandbox-probe && echo usr=$(cat /usr/kvmlite-sandbox-probe); "
         "[ -e /root ] && echo root=visible || echo root=absent; "
         "[ -e /etc/shadow ] && echo shadow=visible || echo shadow=absent; "
         "[ -e /etc/passwd ] && echo passwd=visible || echo passwd=absent; "
         "echo uid=$(id -u) pwd=$(pwd); exit 5")


def _script() -> str:
    sandbox = "kvmlite sandbox -n mode=none -m 512 --"
    return f"""
export XDG_CACHE_HOME={shlex.quote(str(cache_dir().parent))}
mkdir -p "$TESTHOST_WORK/project" && cd "$TESTHOST_WORK/project"
retried_section python {sandbox} python3 -c 'print(6*7)'
retried_section probe {sandbox} sh -c {shlex.quote(PROBE)}
section after sh -c 'cat made-here.txt; ls /usr/kvmlite-sandbox-probe 2>&1 || true'
"""


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, share_guest: DefaultGuest,
         tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    host: TestHost | None = None if hardware_kvm() else request.getfixturevalue("testhost")
    result = run_linux_script(host, _script(), TIMEOUT, tmp_path_factory.mktemp("sandbox"))
    assert not result.timed_out, f"timed out after {TIMEOUT} s; {result.where()}"
    return result


def test_sandbox_python3_prints_42_status_zero(runs: RunResult) -> None:
    rc, out = runs.section("python")
    assert rc == 0, f"{out[-2000:]}; {runs.where()}"
    assert out.replace("\r", "").strip().splitlines()[-1] == "42", runs.where()


def test_sandbox_command_status_is_kvmlites(runs: RunResult) -> None:
    assert runs.section("probe").rc == 5, runs.where()


def test_sandbox_cwd_writes_reach_host_usr_writes_stay_inside(runs: RunResult) -> None:
    out = runs.section("probe").output.replace("\r", "")
    assert "usr=in-vm" in out, runs.where()                     # the write worked, inside the VM
    after = runs.section("after").output
    assert after.splitlines()[0] == "from-the-sandbox", runs.where()
    assert "No such file" in after, runs.where()                # not on the host's /usr


def test_sandbox_hides_root_and_shadow_runs_in_cwd(runs: RunResult) -> None:
    out = runs.section("probe").output.replace("\r", "")
    assert "root=absent" in out and "shadow=absent" in out and "passwd=visible" in out, out
    assert "pwd=" in out and out.split("pwd=")[1].split()[0].endswith("/project"), out
    assert f"uid={os.getuid()}" in out, out
