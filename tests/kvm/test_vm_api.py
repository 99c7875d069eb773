"""The Python API: build a VM from a VmConfig, run it, capture its console."""

from __future__ import annotations

import os

import pytest

from kvmlite.errors import KvmliteError
from kvmlite.vmm.config import VmConfig
from kvmlite.vmm.exitcodes import EndReason
from kvmlite.vmm.vm import Vm

pytestmark = pytest.mark.kvm


def test_vm_api_runs_guest_and_captures_console(kvm, guest) -> None:
    out = bytearray()
    vm = Vm(VmConfig(kernel=str(guest("bootinfo")), params="exit=9 api=yes", mem_mib=32),
            console_output=out.extend)
    try:
        vm.start()
        result = vm.wait(timeout=60)
    finally:
        vm.close()
    assert result is not None and result.reason is EndReason.GUEST_EXIT and result.exit_code == 9
    assert b"api=yes" in out and b"bootinfo: done" in out


def test_vm_api_failed_build_releases_everything(kvm, tmp_path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(10):
        with pytest.raises(KvmliteError, match="no such file"):
            Vm(VmConfig(kernel=str(tmp_path / "missing")))
    assert len(os.listdir("/proc/self/fd")) == before, "file descriptors leaked"
