"""Restoring a VM from a snapshot (docs/snapshot.md).

:func:`load` reads and checks the state file and opens the memory file;
:func:`restore_config` gives the configuration to build with (the saved
one, with what must differ for this VM: its name, its disks, its vsock
socket, its lifetime).  :class:`kvmlite.vmm.vm.Vm` then builds the VM as
for a boot, except that guest RAM is the memory file mapped copy-on-write
and no kernel is loaded, and calls :func:`apply` once every device and
vCPU exists: the irqchip and the PIT, then the vCPUs' state, then the
devices'.  The kvmclock is set by ``Vm.start`` just before the vCPUs run,
so the guest's clock goes on from the instant it was saved.

Everything is checked before any vCPU runs: a snapshot this host's KVM
cannot take (an MSR or an XSAVE layout it refuses) ends in one line.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kvmlite.base.state import Reader, StateError
from kvmlite.errors import ConfigError
from kvmlite.vmm.config import DiskConfig, VmConfig, VsockConfig
from kvmlite.vmm.snapshot import files
from kvmlite.vmm.snapshot.files import SnapshotError
from kvmlite.vmm.snapshot.parts import device_parts

if TYPE_CHECKING:
    from kvmlite.vmm.vm import Vm


@dataclass
class LoadedSnapshot:
    """A checked snapshot, its memory file open for mapping."""

    directory: Path
    header: dict[str, Any]
    state: dict[str, Any]
    memory_fd: int

    def close(self) -> None:
        if self.memory_fd >= 0:
            os.close(self.memory_fd)
            self.memory_fd = -1

    @property
    def memory_size(self) -> int:
        return int(self.header["memory_bytes"])


def load(directory: str | os.PathLike[str]) -> LoadedSnapshot:
    header, state = files.read_state(directory)
    r = Reader(state, f"snapshot {directory}")
    for key in ("config", "vm", "devices"):
        r.sub(key)
    r.list("vcpus")
    path = Path(directory)
    try:
        fd = os.open(path / files.MEMORY_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SnapshotError(f"snapshot {directory}: cannot open the memory file: {exc.strerror}") from None
    return LoadedSnapshot(path, header, state, fd)


def restore_config(snapshot: LoadedSnapshot, *, name: str | None = None, disks: Sequence[str] | None = None,
                   vsock_socket: str | None = None, timeout: float | None = None,
                   labels: Sequence[tuple[str, str]] | None = None) -> VmConfig:
    """The saved configuration with this VM's own name, disks (``PATH[,ro]``
    each, as many as the snapshot had, in order), vsock socket, lifetime and
    labels (``labels`` replace the saved ones but kvmlite's own, ``kvmlite.*``)."""
    config = files.config_from_dict(snapshot.state["config"])
    if config.mem_bytes != snapshot.memory_size:
        raise SnapshotError(f"snapshot {snapshot.directory}: the memory file holds {snapshot.memory_size} bytes "
                            f"but the VM had {config.mem_bytes}")
    changes: dict[str, Any] = {"name": name, "timeout": timeout}
    if disks is not None:
        if len(disks) != len(config.disks):
            raise ConfigError(f"--disk: the snapshot has {len(config.disks)} disk(s); "
                                f"give that many (got {len(disks)})")
        changes["disks"] = tuple(DiskConfig.parse(text) for text in disks)
    if labels is not None:
        changes["labels"] = tuple((k, v) for k, v in config.labels if k.startswith("kvmlite.")) + tuple(labels)
    if config.vsock is not None:
        changes["vsock"] = VsockConfig(config.vsock.cid, vsock_socket, config.vsock.trans)
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot config: {exc}") from None


def apply(vm: "Vm", snapshot: LoadedSnapshot) -> None:
    """Load the saved state into the freshly built ``vm`` (no vCPU has run)."""
    from kvmlite.vmm.snapshot.cpustate import restore_vcpu, restore_vm, xsave_size

    state = snapshot.state
    vcpus = state["vcpus"]
    if len(vcpus) != len(vm.vcpus):
        raise SnapshotError(f"snapshot: {len(vcpus)} vCPU states for {len(vm.vcpus)} vCPUs")
    # The irqchip first (Firecracker's order): setting the IOAPIC may
    # re-send pending level interrupts, which restored LAPICs would take twice.
    restore_vm(vm.vm_fd, state["vm"])
    xsave = xsave_size(vm.vm_fd)
    for vcpu, saved in zip(vm.vcpus, vcpus):
        restore_vcpu(vcpu.fd, saved, xsave_bytes=xsave)
    _restore_parts(device_parts(vm.devices), state["devices"])
    vm.devices.new_generation()     # the guest reseeds its RNG: clones must not share random numbers


def _restore_parts(parts: list[tuple[str, Any]], saved: dict[str, Any]) -> None:
    names = [name for name, _part in parts]
    extra = sorted(set(saved) - set(names))
    if extra:
        raise SnapshotError(f"snapshot: saved state for {extra[0]}, which this VM does not have")
    for name, part in parts:
        if name not in saved:
            raise SnapshotError(f"snapshot: no saved state for {name}")
        try:
            part.restore_state(saved[name])
        except StateError as exc:
            raise SnapshotError(str(exc) if str(exc).startswith(name) else f"{name}: {exc}") from None


def saved_clock(snapshot: LoadedSnapshot) -> int:
    """The guest's kvmclock (ns) when the snapshot was taken."""
    return Reader(snapshot.state["vm"], "snapshot vm").sub("clock").int("clock")
