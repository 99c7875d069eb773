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


def test_vm_api_each_disk_is_served_by_its_own_event_loop(kvm, guest, tmp_path) -> None:
    """Each virtio-blk disk gets an event loop thread of its own: its
    doorbell is served there, its reads and writes run there or on its I/O
    threads, and the loop ends with the VM."""
    from kvmlite.vmm.config import DiskConfig

    images = []
    for i in range(2):
        images.append(tmp_path / f"disk{i}.img")
        images[-1].write_bytes(bytes(4 << 20))
    out = bytearray()
    vm = Vm(VmConfig(kernel=str(guest("virtio")), params="transport=pci", mem_mib=64,
                     disks=tuple(DiskConfig(str(p)) for p in images)), console_output=out.extend)
    try:
        loops = list(vm.devices.device_loops)
        blocks = [(device, transport) for name, device, transport in vm.devices.virtio if name.startswith("virtio-blk")]
        vm.start()
        result = vm.wait(timeout=60)
        stats = vm.devices.stats()
        threads = [loop._thread for loop in loops]
    finally:
        vm.close()
    assert result is not None and result.exit_code == 42, out.decode(errors="replace")
    assert [loop.name for loop in loops] == ["virtio-blk0", "virtio-blk1"]
    assert [device.loop for device, _transport in blocks] == loops
    assert [transport.doorbells.loop for _device, transport in blocks] == loops
    assert vm.event_loop not in loops
    assert stats["virtio-blk0"]["write_requests"] > 0 and stats["virtio-blk0"]["read_requests"] > 0
    assert not any(thread.is_alive() for thread in threads)
