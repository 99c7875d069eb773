"""A baseline that cannot run is reported with its own error line, never as
NaN or a blank (bench/common.py).  QEMU is replaced by small scripts on
PATH that fail the way QEMU fails on a PVM-based /dev/kvm."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest

from bench import blk_nested, common, linux_boot

MSR_ERROR = "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69"


def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """``qemu-system-x86_64`` on PATH is the shell script ``body``."""
    script = tmp_path / "qemu-system-x86_64"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    common.qemu_cpu.cache_clear()


# Aborts (SIGABRT, status -6) under plain -cpu host, as QEMU 7.2 does on PVM.
ABORT_UNDER_HOST = f"""
case " $* " in
  *" -cpu host "*) echo 'kvm: some notice' >&2; echo '{MSR_ERROR}' >&2; kill -ABRT $$ ;;
esac
cat >/dev/null
"""


def no_nan(value: object) -> bool:
    return "NaN" not in json.dumps(value) and not (isinstance(value, float) and math.isnan(value))


@pytest.fixture(autouse=True)
def _fresh_cpu_choice():
    common.qemu_cpu.cache_clear()
    yield
    common.qemu_cpu.cache_clear()


def test_qemu_cpu_host_aborts_falls_back_to_model_without_arch_capabilities(tmp_path, monkeypatch) -> None:
    fake_qemu(tmp_path, monkeypatch, ABORT_UNDER_HOST)
    assert common.qemu_cpu() == "host,-arch-capabilities"


def test_qemu_cpu_host_runs_keeps_host(tmp_path, monkeypatch) -> None:
    fake_qemu(tmp_path, monkeypatch, "cat >/dev/null\n")
    assert common.qemu_cpu() == "host"


def test_qemu_cpu_no_model_runs_raises_with_qemus_error_line(tmp_path, monkeypatch) -> None:
    fake_qemu(tmp_path, monkeypatch, f"echo '{MSR_ERROR}' >&2; kill -ABRT $$\n")
    with pytest.raises(common.BaselineError) as info:
        common.qemu_cpu()
    message = str(info.value)
    assert "\n" not in message
    assert f"-cpu host: status -6: {MSR_ERROR}" in message
    assert f"-cpu host,-arch-capabilities: status -6: {MSR_ERROR}" in message


def test_measure_failing_baseline_surfaces_its_error_line(tmp_path, monkeypatch) -> None:
    # Arrange: QEMU starts (the CPU probe passes) but every benchmark run aborts
    fake_qemu(tmp_path, monkeypatch,
              'case " $* " in *" -S "*) cat >/dev/null; exit 0 ;; esac\n'
              f"echo '{MSR_ERROR}' >&2; kill -ABRT $$\n")
    # Act
    value = common.measure("qemu", lambda: common.qemu_cmd(Path("/nonexistent"), ""),
                           lambda timed: None if timed.first_byte is None else 1.0, repeat=2)
    # Assert
    assert value == f"failed: qemu exited with status -6: {MSR_ERROR}"
    assert common.ratio(12.0, value) == f"none: the baseline failed: qemu exited with status -6: {MSR_ERROR}"


def test_measure_no_cpu_model_runs_reports_error_not_nan(tmp_path, monkeypatch) -> None:
    fake_qemu(tmp_path, monkeypatch, f"echo '{MSR_ERROR}' >&2; kill -ABRT $$\n")
    value = common.measure("qemu", lambda: common.qemu_cmd(Path("/nonexistent"), ""), lambda t: 1.0, repeat=3)
    assert isinstance(value, str) and value.startswith("failed: qemu-system-x86_64 cannot start a VM here")
    assert MSR_ERROR in value


def test_measure_working_command_gives_median() -> None:
    value = common.measure("true", lambda: ["sh", "-c", "echo x"],
                           lambda timed: 5.0 if timed.lines else None, repeat=3)
    assert value == 5.0


def test_error_line_prefers_the_line_naming_an_error() -> None:
    text = "qemu-system-x86_64: warning: host doesn't support requested feature\n" + MSR_ERROR + "\nAborted\n"
    assert common.error_line(text) == MSR_ERROR
    assert common.error_line("\n\nlast words\n") == "last words"
    assert common.error_line("") == "(no output)"


def test_linux_boot_parse_failed_qemu_reports_its_error() -> None:
    console = ("BOOT name=kvmlite first_ms=100 marker_ms=900 exit_ms=1000 rc=0\n"
               "BOOT name=qemu first_ms=-1 marker_ms=-1 exit_ms=20 rc=134\n"
               f"BOOTERR name=qemu {MSR_ERROR}\n")
    out = linux_boot.parse(console)
    assert out["kvmlite_marker_ms"] == 900
    assert out["qemu_marker_ms"] == f"failed: {MSR_ERROR}"
    assert out["ratio_marker"] == f"none: the baseline failed: {MSR_ERROR}"
    assert no_nan(out)


def test_linux_boot_parse_nothing_reported_says_so() -> None:
    out = linux_boot.parse("")
    assert out["kvmlite_marker_ms"] == "failed: no kvmlite run reported (see the console log)"
    assert no_nan(out)


def test_blk_nested_parse_failed_qemu_reports_its_error() -> None:
    console = "".join(f"VMM=kvmlite blkbench mode={m} bs=4096 qd=8 ops=10 seconds=1.0 mbps=50.0 iops=100\n"
                      for m in blk_nested.MODES) + MSR_ERROR + "\n"
    out = blk_nested.parse(console)
    assert out["kvmlite_seqread"] == {"MBps": 50.0, "IOPS": 100.0, "runs": 1}
    assert out["qemu_seqread"] == f"failed: {MSR_ERROR}"
    assert out["ratio_seqread"] == f"none: the baseline failed: {MSR_ERROR}"
    assert no_nan(out)
