"""``kvmlite stop`` shuts a real Linux guest down gracefully (one test-host boot).

Inside the nested test host (a real KVM), ``kvmlite run`` boots the default
guest (Debian's cloud kernel and the kvmlite initramfs) under the name
``lin``; once its init is ready, ``kvmlite list`` shows it and ``kvmlite
stop`` (no ``--force``) asks it to shut down.  The cloud kernel's
power-button driver (button.ko) is not loaded by the default guest, so PWRBTN_EN
stays clear and kvmlite sends Ctrl-Alt-Del through the i8042; the init
traps the kernel's SIGINT, prints its shutdown marker and powers off
through ACPI S5, and ``kvmlite run`` exits 0.
"""

from __future__ import annotations

import shlex
import sys

import pytest

from kvmlite.guest.initscript import READY_MARKER

from .testhost import REPO, RunResult, TestHost

BOOT_TIMEOUT = 1200          # TCG: the test host, then Linux under kvmlite inside it
GUEST_READY_S = 300          # how long the script waits for the guest's init
STOP_TIMEOUT_S = 120         # kvmlite stop --timeout: hard stop only after this
SHUTDOWN_MARKER = "kvmlite-init: ctrl-alt-del: powering off"


def script(testhost: TestHost) -> str:
    guest = testhost.files.guest
    py = f"env PYTHONPATH={shlex.quote(str(REPO))} XDG_RUNTIME_DIR=/tmp/xdg {shlex.quote(sys.executable)}"
    run = f"{py} -m kvmlite run -k {shlex.quote(str(guest.kernel))} -i {shlex.quote(str(guest.initrd))} --name lin"
    return f"""
mkdir -p /tmp/xdg && chmod 700 /tmp/xdg
{run} > /tmp/run.log 2>&1 < /dev/null &
VM=$!
n=0
while ! grep -q {shlex.quote(READY_MARKER)} /tmp/run.log; do
    kill -0 $VM 2>/dev/null || break
    n=$((n + 1)); [ $n -gt {GUEST_READY_S * 2} ] && break
    sleep 0.5
done
sleep 1
section list {py} -m kvmlite list --json
section stop {py} -m kvmlite stop --name lin --timeout {STOP_TIMEOUT_S}
( sleep {STOP_TIMEOUT_S + 60}; kill -9 $VM 2>/dev/null ) &
WATCHDOG=$!
wait $VM
echo "run-rc=$?" >> /tmp/run.log
kill $WATCHDOG 2>/dev/null
section run cat /tmp/run.log
section list-after {py} -m kvmlite list --json
"""


@pytest.fixture(scope="module")
def stopped(testhost: TestHost, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    result = testhost.run(script(testhost), BOOT_TIMEOUT, tmp_path_factory.mktemp("control-stop"))
    assert not result.timed_out, f"test host timed out after {BOOT_TIMEOUT} s; {result.where()}"
    return result


@pytest.mark.nested
def test_guest_boots_and_is_listed(stopped: RunResult) -> None:
    run = stopped.section("run").output
    assert READY_MARKER in run, f"the guest's init never became ready under kvmlite; {stopped.where()}"
    rc, listing = stopped.section("list")
    assert rc == 0 and '"name": "lin"' in listing and '"state": "running"' in listing, \
        f"{listing}; {stopped.where()}"


@pytest.mark.nested
def test_stop_graceful_runs_guest_shutdown_and_exits_0(stopped: RunResult) -> None:
    rc, out = stopped.section("stop")
    run = stopped.section("run").output
    assert rc == 0 and "lin: stopping (ctrl-alt-del)" in out and "lin: stopped" in out, \
        f"{out}; {stopped.where()}"
    assert SHUTDOWN_MARKER in run, f"the init's shutdown handler did not run; {stopped.where()}"
    assert "run-rc=0" in run, f"kvmlite run did not exit 0; {stopped.where()}"
    assert "did not shut down within" not in run, f"it was a hard stop; {stopped.where()}"


@pytest.mark.nested
def test_list_after_stop_is_empty(stopped: RunResult) -> None:
    assert stopped.section("list-after") == (0, "[]"), stopped.where()
