"""A real Linux guest under kvmlite (issue: core VMM).

Debian's cloud kernel with the default guest's busybox initramfs boots
under ``kvmlite run``; its init prints a marker, reports what the kernel
sees and exits with a status.  All checks share one boot of the test host
(or run directly on hardware KVM).
"""

from __future__ import annotations

import re

import pytest

from .linux import hardware_kvm, run_linux_script
from .testhost import RunResult, TestHost

pytestmark = pytest.mark.nested
TIMEOUT = 1200

SCRIPT = r"""
retried_section smp kvmlite run -k "$KERNEL" -i "$INITRD" -c 2 -m 512 -p "quiet kvmlite.probe=xyzzy" -- \
    'echo LINUX-MARK; echo cpus=$(grep -c ^processor /proc/cpuinfo); grep MemTotal /proc/meminfo; echo cmdline=$(cat /proc/cmdline); exit 5'
retried_section one-cpu kvmlite run -k "$KERNEL" -i "$INITRD" -c 1 -m 256 -p quiet -- \
    'echo cpus=$(grep -c ^processor /proc/cpuinfo); grep MemTotal /proc/meminfo'
retried_section poweroff kvmlite run -k "$KERNEL" -i "$INITRD" -p quiet -- 'echo going down; poweroff -f'
section reboot kvmlite run -k "$KERNEL" -i "$INITRD" -p quiet -- 'reboot -f'
retried_section flush kvmlite run -k "$KERNEL" -i "$INITRD" -c 2 -p quiet -- \
    'for i in $(seq 1 20); do echo flush-line-$i-................................................................; done; exit 7'
"""


@pytest.fixture(scope="module")
def linux(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    host: TestHost | None = None if hardware_kvm() else request.getfixturevalue("testhost")
    result = run_linux_script(host, SCRIPT, TIMEOUT, tmp_path_factory.mktemp("linux-boot"))
    assert not result.timed_out, f"timed out after {TIMEOUT} s; {result.where()}"
    return result


def _mem_total_kib(output: str) -> int:
    m = re.search(r"MemTotal:\s+(\d+) kB", output)
    assert m, output
    return int(m.group(1))


def test_linux_boots_to_init_marker_and_exit_status(linux: RunResult) -> None:
    rc, out = linux.section("smp")
    assert "kvmlite-init: ready" in out and "LINUX-MARK" in out, f"{out[-2000:]}; {linux.where()}"
    assert rc == 5, f"the guest command's status must be kvmlite's: {rc}; {linux.where()}"


def test_linux_sees_two_cpus_with_c2(linux: RunResult) -> None:
    assert "cpus=2" in linux.section("smp").output, linux.where()
    assert "cpus=1" in linux.section("one-cpu").output, linux.where()


def test_linux_memtotal_follows_m(linux: RunResult) -> None:
    big, small = _mem_total_kib(linux.section("smp").output), _mem_total_kib(linux.section("one-cpu").output)
    # MemTotal is RAM minus what the kernel reserves for itself: close below -m.
    assert 400_000 < big <= 512 * 1024, big
    assert 150_000 < small <= 256 * 1024, small
    assert big - small > 200_000


def test_linux_cmdline_has_defaults_and_params(linux: RunResult) -> None:
    out = linux.section("smp").output
    line = next(l for l in out.splitlines() if l.startswith("cmdline="))
    assert "console=ttyS0" in line and "kvmlite.probe=xyzzy" in line, line


def test_linux_acpi_poweroff_exits_zero(linux: RunResult) -> None:
    rc, out = linux.section("poweroff")
    assert "going down" in out and rc == 0, f"rc={rc}: {out[-1500:]}; {linux.where()}"


def test_linux_command_output_all_reaches_host_before_exit(linux: RunResult) -> None:
    """A command's last output must not be lost when the VM ends right after
    it (it sits in the guest tty's buffer; a 2-vCPU guest exposed this)."""
    rc, out = linux.section("flush")
    assert rc == 7, f"rc={rc}; {linux.where()}"
    missing = [i for i in range(1, 21) if f"flush-line-{i}-" not in out]
    assert not missing, f"lines {missing} never reached the host; {linux.where()}"


def test_linux_reboot_exits_with_reset_status(linux: RunResult) -> None:
    rc, out = linux.section("reboot")
    assert rc == 3, f"rc={rc}: {out[-1500:]}; {linux.where()}"
    assert "guest requested a reset" in out
