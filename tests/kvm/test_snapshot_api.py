"""The Python API of snapshots on this machine's /dev/kvm: ``Vm.snapshot``,
``Vm.restore`` and ``Vm.fork`` in one process, with the counter guest."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from kvmlite import Vm, VmConfig
from kvmlite.errors import ConfigError
from kvmlite.vmm.config import DiskConfig

pytestmark = pytest.mark.kvm
TICK = re.compile(rb"tick (\d+)\n")


class Console:
    """A console sink that keeps the ticks it saw."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> None:
        with self.lock:
            self.data += data

    def ticks(self) -> list[int]:
        with self.lock:
            text = bytes(self.data)
        return [int(m.group(1)) for m in TICK.finditer(text)]

    def wait(self, count: int, timeout: float = 20.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(self.ticks()) < count:
            assert time.monotonic() < deadline, f"fewer than {count} ticks: {bytes(self.data)[-200:]!r}"
            time.sleep(0.02)
        return self.ticks()


@pytest.fixture
def counter_vm(kvm: str, guest, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    console = Console()
    vm = Vm(VmConfig(kernel=str(guest("counter")), name="api-orig"), console_output=console)
    vm.start()
    yield vm, console
    vm.close()


def test_fork_two_clones_continue_from_the_parent_state(counter_vm) -> None:
    # Arrange
    vm, console = counter_vm
    console.wait(3)
    # Act
    sinks = [Console(), Console()]
    clones = vm.fork(2, names=["api-c1", "api-c2"], console_output=sinks)
    try:
        for clone in clones:
            clone.start()
        at_fork = console.ticks()[-1]
        a, b = (sink.wait(10) for sink in sinks)
        # Assert: both clones count on from the parent's count, the same way
        assert at_fork - 2 <= a[0] <= at_fork + 3 and a[0] > 1, (at_fork, a[:3])
        assert a[:10] == list(range(a[0], a[0] + 10)) and b[:10] == a[:10]
        assert [c.name for c in clones] == ["api-c1", "api-c2"]
    finally:
        for clone in clones:
            clone.close()
    n = len(console.ticks())
    console.wait(n + 2)          # the parent still runs


def test_restore_with_wrong_disk_count_is_config_error(counter_vm, tmp_path: Path) -> None:
    vm, console = counter_vm
    console.wait(1)
    vm.snapshot(str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="the snapshot has 0 disk"):
        Vm.restore(str(tmp_path / "s"), disks=[str(tmp_path / "x.img")])


def test_fork_refuses_a_writable_disk_without_one_per_clone(kvm: str, guest, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    vm = Vm(VmConfig(kernel=str(guest("counter")), disks=(DiskConfig(str(disk)),)))
    try:
        vm.start()
        with pytest.raises(ConfigError, match="give each clone its own"):
            vm.fork(1)
    finally:
        vm.close()


def test_each_restore_gets_a_new_vm_generation_id_and_raises_its_gpe(counter_vm, tmp_path: Path) -> None:
    # Arrange
    from kvmlite.arch.x86 import layout
    from kvmlite.arch.x86.acpi import pm

    vm, console = counter_vm
    console.wait(1)
    parent_id = bytes(vm.memory.view(layout.VMGENID_ADDR, 16))
    # Act
    clones = vm.fork(2, names=["api-g1", "api-g2"])
    try:
        ids = [bytes(c.memory.view(layout.VMGENID_ADDR, 16)) for c in clones]
        gpes = [c.devices.acpi_pm.save_state()["gpe_sts"] for c in clones]
    finally:
        for clone in clones:
            clone.close()
    # Assert: 16 fresh random bytes each (the parent's stays), and the GPE whose handler notifies VGEN
    assert parent_id != bytes(16) and len({parent_id, *ids}) == 3
    assert all(gpe & (1 << pm.GPE_VMGENID) for gpe in gpes)
    assert bytes(vm.memory.view(layout.VMGENID_ADDR, 16)) == parent_id
