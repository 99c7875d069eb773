"""Smoke tests of the nested test host, all from ONE boot (~15 s wall).

They prove the harness (KVM in the test host, this checkout and Python
visible, a writable work directory) and, independently of kvmlite's own
VMM, the default guest's initramfs: QEMU with KVM boots Debian's cloud
kernel with it, and the init's exit-status byte reaches QEMU's
isa-debug-exit (status (7 << 1) | 1 = 15 for ``exit 7``).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from kvmlite.guest.initscript import READY_MARKER

from . import testhost as harness
from .testhost import (REPO, RunResult, Section, Share, TestHost, TestHostUnavailable, guest_qemu_command,
                       parse_console, plan_shares)

BOOT_TIMEOUT = 900   # TCG on two cores; a normal run takes well under a minute


@pytest.fixture(scope="module")
def under_tmp() -> Iterator[Path]:
    """A directory under /tmp, which the test host covers with a tmpfs: it
    must come back as a share (as a checkout cloned under /tmp does)."""
    path = Path(tempfile.mkdtemp(prefix="kvmlite-share-", dir="/tmp"))
    (path / "marker.txt").write_text("shared from under /tmp\n")
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def smoke(testhost: TestHost, tmp_path_factory: pytest.TempPathFactory, under_tmp: Path) -> RunResult:
    workdir = tmp_path_factory.mktemp("testhost-smoke")
    python = shlex.quote(sys.executable)
    qemu = guest_qemu_command(testhost.files.guest, "echo hello from the guest; exit 7")
    script = f"""
inner() {{ start=$(date +%s%N); "$@"; rc=$?; echo "inner-ms=$(( ($(date +%s%N) - start) / 1000000 ))"; return $rc; }}
section kvm-node sh -c 'test -c /dev/kvm && cat /sys/module/kvm_amd/parameters/nested'
section kvmlite-kvm env PYTHONPATH={shlex.quote(str(REPO))} {python} -c 'from kvmlite.kvm import Kvm; print(Kvm().api_version())'
section root-readonly sh -c 'touch {shlex.quote(str(REPO))}/.testhost-probe'
section tmp-writable sh -c 'echo ok > /tmp/probe && cat /tmp/probe'
section workdir sh -c 'echo written-in-testhost > "$TESTHOST_WORK/from-testhost.txt"'
section masked-share cat {shlex.quote(str(under_tmp / "marker.txt"))}
section masked-share-ro sh -c 'touch {shlex.quote(str(under_tmp))}/.probe'
section qemu-guest inner {qemu}
"""
    result = testhost.run(script, BOOT_TIMEOUT, workdir, extra=[under_tmp])
    assert not result.timed_out, f"test host timed out after {BOOT_TIMEOUT} s; {result.where()}"
    print(f"test host: ready after {result.boot_seconds} s, whole run {result.seconds:.1f} s; {result.where()}")
    return result


def test_parse_console_sections_status_and_noise() -> None:
    # Arrange: CRLF line ends and a kernel message outside the sections
    text = ("@@TESTHOST READY uptime=1.0 kvm=yes\r\n@@BEGIN a\r\nline 1\r\nline 2\r\n@@END a rc=3\r\n"
            "[    5.0] some kernel message\r\n@@BEGIN b\r\n@@END b rc=0\r\n@@TESTHOST DONE rc=0\r\n")
    # Act
    rc, sections = parse_console(text)
    # Assert
    assert rc == 0
    assert sections == {"a": Section(3, "line 1\nline 2"), "b": Section(0, "")}


def test_parse_console_end_marker_after_an_unended_line() -> None:
    # a guest's console log cut mid-line, then the section's end marker
    rc, sections = parse_console("@@BEGIN run0\ncount 1\ncount 90@@END run0 rc=0\n@@TESTHOST DONE rc=0\n")
    assert rc == 0 and sections == {"run0": Section(0, "count 1\ncount 90")}


def test_parse_console_retried_section_is_its_last_run() -> None:
    text = ("@@BEGIN sdk\nkvmlite: error: guest triple fault on vCPU 0\n@@END sdk rc=4\n"
            "@@RETRY sdk: an inner guest crashed or froze; running the step again\n"
            "@@BEGIN sdk\nfine\n@@END sdk rc=0\n")
    assert parse_console(text)[1] == {"sdk": Section(0, "fine")}


@pytest.mark.parametrize("crashes", [0, 1, 2, 3])
def test_retried_section_runs_a_crashed_step_up_to_three_times(tmp_path: Path, crashes: int) -> None:
    # the preamble's shell function, in the machine's sh: a step whose inner
    # guest triple-faults on its first `crashes` runs
    step = (f'n=$(($(cat {tmp_path}/n 2>/dev/null || echo 0) + 1)); echo $n > {tmp_path}/n; echo "run $n"; '
            f'[ $n -gt {crashes} ] || {{ echo "kvmlite: error: guest triple fault on vCPU 0"; exit 4; }}')
    script = (harness.SCRIPT_PREAMBLE.replace('cd "$TESTHOST_WORK" || exit 1', "")
              + f"retried_section step sh -c {shlex.quote(step)}\n")
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60).stdout
    section = parse_console(out)[1]["step"]
    runs = min(crashes + 1, 3)
    assert out.count("@@RETRY step") == runs - 1 and (tmp_path / "n").read_text() == f"{runs}\n"
    assert section == (Section(0, f"run {runs}") if crashes < 3 else
                       Section(4, "run 3\nkvmlite: error: guest triple fault on vCPU 0"))


def test_guest_crash_names_the_vmm_line_of_the_last_run_only(tmp_path: Path) -> None:
    text = ("@@BEGIN shell\n[ 4.7] Spectre V2 : Filling RSB on context swkvmlite: error: guest triple fault on "
            "vCPU 0 (rip 0xfff0)\n\n@@END shell rc=124\n@@BEGIN command\nfrom-the-guest\n@@END command rc=17\n"
            "@@BEGIN argv\nkvmlite: error: guest triple fault on vCPU 0\n@@END argv rc=4\n"
            "@@BEGIN argv\ntwo words\n@@END argv rc=0\n@@TESTHOST DONE rc=0\n")
    rc, sections = parse_console(text)
    result = RunResult(text, tmp_path / "log", 0, False, 1.0, script_rc=rc, sections=sections)
    assert result.guest_crash("shell") == "kvmlite: error: guest triple fault on vCPU 0 (rip 0xfff0)"
    assert result.guest_crash("command") is None and result.guest_crash("argv") is None   # its last run passed


def test_parse_console_no_done_marker_gives_none() -> None:
    rc, sections = parse_console("@@BEGIN a\nhalf")
    assert rc is None and sections == {}


@pytest.mark.nested
def test_testhost_boots_and_runs_script(smoke: RunResult) -> None:
    assert smoke.script_rc is not None, f"no @@TESTHOST DONE marker; {smoke.where()}"
    assert smoke.boot_seconds is not None, smoke.where()
    assert smoke.log_path.is_file()


@pytest.mark.nested
def test_testhost_dev_kvm_present_nested_svm(smoke: RunResult) -> None:
    rc, output = smoke.section("kvm-node")
    assert rc == 0, f"/dev/kvm missing in the test host: {output}; {smoke.where()}"
    assert output.strip() == "1", smoke.where()


@pytest.mark.nested
def test_testhost_kvmlite_kvm_layer_api_version_12(smoke: RunResult) -> None:
    rc, output = smoke.section("kvmlite-kvm")
    assert (rc, output.strip()) == (0, "12"), f"{output}; {smoke.where()}"


@pytest.mark.nested
def test_testhost_root_readonly_tmp_writable(smoke: RunResult) -> None:
    assert smoke.section("root-readonly").rc != 0, smoke.where()
    assert smoke.section("tmp-writable") == Section(0, "ok"), smoke.where()


@pytest.mark.nested
def test_testhost_workdir_written_visible_here(smoke: RunResult) -> None:
    assert smoke.section("workdir").rc == 0, smoke.where()
    written = smoke.log_path.parent / "from-testhost.txt"
    assert written.read_text() == "written-in-testhost\n", smoke.where()


@pytest.mark.nested
def test_testhost_directory_under_tmp_shared_read_only(smoke: RunResult, under_tmp: Path) -> None:
    assert smoke.section("masked-share") == Section(0, "shared from under /tmp"), smoke.where()
    assert smoke.section("masked-share-ro").rc != 0, smoke.where()
    assert not (under_tmp / ".probe").exists()


def test_plan_shares_checkout_under_tmp_shared_read_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Arrange: a clone under /tmp, the cache and Python where the test host sees them
    monkeypatch.setattr(harness, "REPO", Path("/tmp/clone"))
    monkeypatch.setattr(harness, "cache_dir", lambda: Path("/root/.cache/kvmlite"))
    monkeypatch.setattr(sys, "prefix", "/usr")
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    # Act
    shares = plan_shares(Path("/tmp/pytest-of-root/pytest-1/x0"))
    # Assert: parents first; the writable work directory last here
    assert shares == [Share("ro0", Path("/tmp/clone"), True),
                      Share("work", Path("/tmp/pytest-of-root/pytest-1/x0"), False)]
    assert shares[0].cmdline() == "testhost.share=ro0:ro:/tmp/clone"


def test_plan_shares_visible_paths_not_shared_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "REPO", Path("/root/src/kvmlite"))
    monkeypatch.setattr(harness, "cache_dir", lambda: Path("/root/.cache/kvmlite"))
    monkeypatch.setattr(sys, "prefix", "/usr")
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    assert plan_shares(Path("/root/work")) == [Share("work", Path("/root/work"), False)]


def test_plan_shares_nested_masked_paths_share_the_parent_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "REPO", Path("/tmp/clone"))
    monkeypatch.setattr(harness, "cache_dir", lambda: Path("/tmp/clone/.cache/kvmlite"))
    monkeypatch.setattr(sys, "prefix", "/tmp/clone/.venv")
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    ro = [share for share in plan_shares(Path("/root/work")) if share.readonly]
    assert ro == [Share("ro0", Path("/tmp/clone"), True)]


def test_plan_shares_path_with_space_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "REPO", Path("/tmp/my clone"))
    with pytest.raises(TestHostUnavailable) as info:
        plan_shares(Path("/root/work"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot share checkout '/tmp/my clone' into the test host")


def test_plan_shares_work_directory_with_comma_refused(tmp_path: Path) -> None:
    with pytest.raises(TestHostUnavailable, match="cannot share work directory .*a,b"):
        plan_shares(tmp_path / "a,b")


@pytest.mark.nested
def test_testhost_qemu_kvm_boots_default_guest_initramfs(smoke: RunResult) -> None:
    rc, output = smoke.section("qemu-guest")
    assert READY_MARKER in output, f"guest init never became ready; {smoke.where()}"
    assert "hello from the guest" in output, smoke.where()
    assert rc == (7 << 1) | 1, f"QEMU exit status {rc}, expected 15 (exit 7 through port 0x501); {smoke.where()}"


def test_collect_soft_lockup_kills_and_reports_stall(tmp_path) -> None:
    # Arrange: a stand-in for QEMU whose "test host" reports a soft lockup and hangs
    import subprocess
    import time

    from .testhost import _collect

    proc = subprocess.Popen(["sh", "-c", "echo '[ 264.4] watchdog: BUG: soft lockup - CPU#0 stuck for 209s!'; "
                                         "sleep 60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    start = time.monotonic()
    # Act
    result = _collect(proc, tmp_path / "log", 30, None)
    # Assert: abandoned at once, not after the timeout
    assert result.stalled and not result.timed_out
    assert time.monotonic() - start < 10


def test_collect_hung_task_report_split_across_reads_is_a_stall(tmp_path) -> None:
    # Arrange: a test host whose kernel reports a hung task (in two writes, as
    # a slow serial line may deliver it), then goes on printing such reports
    import subprocess
    import time

    from .testhost import _collect

    proc = subprocess.Popen(["sh", "-c", "printf '[  242.8] INFO: task khugepaged:36 blocked for mo'; sleep 0.5; "
                                         "echo 're than 120 seconds.'; while true; do echo tick; sleep 0.2; done"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    start = time.monotonic()
    # Act
    result = _collect(proc, tmp_path / "log", 30, None)
    # Assert: abandoned at once, although the console never fell silent
    assert result.stalled and not result.timed_out
    assert time.monotonic() - start < 10


def test_collect_silent_console_is_a_stall_not_a_timeout(tmp_path, monkeypatch) -> None:
    # Arrange: a stand-in for QEMU whose test host says one line, then freezes without a word
    import subprocess
    import time

    from . import testhost

    monkeypatch.setattr(testhost, "SILENT_STALL", 2)
    proc = subprocess.Popen(["sh", "-c", "echo '@@TESTHOST READY uptime=2.5 kvm=yes'; sleep 60"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    start = time.monotonic()
    # Act
    result = testhost._collect(proc, tmp_path / "log", 30, None)
    # Assert: abandoned after the silence, long before the timeout, and the output kept
    assert result.stalled and not result.timed_out
    assert 2 <= time.monotonic() - start < 15
    assert "READY" in result.console


def test_collect_deadline_is_a_timeout(tmp_path) -> None:
    import subprocess

    from .testhost import _collect

    proc = subprocess.Popen(["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    result = _collect(proc, tmp_path / "log", 2, None)
    assert result.timed_out and not result.stalled and "tick" in result.console


def test_run_retries_a_test_host_that_ended_before_the_script(tmp_path, monkeypatch) -> None:
    # Arrange: a stand-in for QEMU whose first boot panics half-way through
    # the script and whose second boot finishes it
    from . import testhost

    marker = tmp_path / "booted-once"
    first = "echo '@@BEGIN a'; echo one; echo '@@END a rc=0'; echo 'Kernel panic - not syncing: Fatal exception'"
    second = f"{first.rsplit(';', 1)[0]}; echo '@@BEGIN b'; echo two; echo '@@END b rc=0'; echo '@@TESTHOST DONE rc=0'"
    script = f"if [ -e {marker} ]; then {second}; else touch {marker}; {first}; fi"
    host = object.__new__(testhost.TestHost)
    monkeypatch.setattr(host, "argv", lambda workdir, extra=(): ["sh", "-c", script], raising=False)
    # Act
    result = host.run("true", 30, tmp_path)
    # Assert: the second boot's whole output is the result, and the first was kept in its own log
    assert result.script_rc == 0 and not result.ended_early
    assert set(result.sections) == {"a", "b"}
    assert result.log_path.name == "testhost-console.2.log"
    assert "Kernel panic" in (tmp_path / "testhost-console.log").read_text()


def test_run_gives_up_after_the_retries_and_says_how_it_ended(tmp_path, monkeypatch, capsys) -> None:
    from . import testhost

    host = object.__new__(testhost.TestHost)
    monkeypatch.setattr(host, "argv", lambda workdir, extra=(): ["sh", "-c", "echo 'BUG: kernel NULL pointer'"],
                        raising=False)
    result = host.run("true", 30, tmp_path)
    assert result.ended_early and result.script_rc is None
    err = capsys.readouterr().err
    assert err.count("ended before the script did (BUG: kernel NULL pointer)") == testhost.STALL_ATTEMPTS
    assert "giving up" in err


def test_compile_checkout_leaves_fresh_bytecode_for_the_test_host(tmp_path: Path, monkeypatch) -> None:
    # Arrange: a checkout with a module in each place the test host imports from
    import importlib.util

    for rel in ("kvmlite/vmm/vm.py", "tests/nested/probe_helpers.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("VALUE = 42\n")
    monkeypatch.setattr(harness, "REPO", tmp_path)
    # Act
    harness.compile_checkout()
    # Assert: each has the .pyc the interpreter looks for, no older than its source
    for rel in ("kvmlite/vmm/vm.py", "tests/nested/probe_helpers.py"):
        cached = Path(importlib.util.cache_from_source(str(tmp_path / rel)))
        assert cached.is_file() and cached.stat().st_mtime >= (tmp_path / rel).stat().st_mtime
