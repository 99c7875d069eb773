"""Taking a snapshot of a running VM (docs/snapshot.md).

The order, on the thread that asked (the control server's worker, or the
embedding program's):

1. pause: every vCPU parks out of KVM_RUN and the guest clock is held
   (:mod:`kvmlite.vmm.control`);
2. the devices settle: each ``save_state`` runs once with the I/O loops
   still going, so a disk finishes its in-flight requests and flushes
   them to the image (nothing the guest was told is written is lost);
3. every I/O loop is held (its thread waits inside a callback), so no
   device writes guest RAM or changes its state from here on;
4. the state is taken: devices, the VM (irqchip, PIT, clock), each vCPU;
   guest RAM goes to the memory file;
5. the loops go on; the VM resumes, or with ``stop`` ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from kvmlite.base.state import StateError
from kvmlite.errors import KvmliteError
from kvmlite.vmm.snapshot import files
from kvmlite.vmm.snapshot.files import SnapshotError
from kvmlite.vmm.snapshot.parts import device_parts

if TYPE_CHECKING:
    from kvmlite.base.eventloop import EventLoop
    from kvmlite.vmm.vm import Vm

log = logging.getLogger(__name__)
HOLD_TIMEOUT = 10.0       # seconds for an I/O loop to reach the hold


def take_snapshot(vm: "Vm", directory: str | os.PathLike[str], *, stop: bool = False) -> dict[str, Any]:
    """Save ``vm`` to ``directory`` (new or empty); returns what was saved
    (sizes and times).  The VM resumes afterwards (unless it was paused
    before), or ends with ``stop``.  SnapshotError names what could not be saved."""
    path = files.prepare_directory(directory)
    was_paused = vm.control.state() == "paused"
    vm.control.pause()
    start = time.monotonic()
    try:
        summary = _save(vm, path)
    except BaseException:
        _clean(path)
        if not was_paused:
            vm.control.resume()
        raise
    summary["seconds"] = round(time.monotonic() - start, 3)
    if stop:
        vm.stop()
    elif not was_paused:
        vm.control.resume()
    return summary


def _save(vm: "Vm", path: Path) -> dict[str, Any]:
    from kvmlite.vmm.snapshot.cpustate import msrs_to_save, save_vm, xsave_size

    parts = device_parts(vm.devices)
    _save_parts(parts)                     # settle: in-flight requests complete and reach the disk
    fd, tmp = files.open_memory_for_writing(path)
    try:
        with _held(_loops(vm)):
            devices = _save_parts(parts)
            machine = save_vm(vm.vm_fd)
            held_clock = vm.control.held_clock()
            if held_clock is not None:
                machine["clock"]["clock"] = held_clock   # the guest's time at the pause, not now
            msrs, xsave = msrs_to_save(vm.kvm), xsave_size(vm.vm_fd)
            vcpus = [_save_vcpu(v.fd, msrs, xsave) for v in vm.vcpus]
            size = vm.memory.save_to(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    state = {"config": files.config_to_dict(vm.config), "memory": {"size": size}, "vm": machine,
             "vcpus": vcpus, "devices": devices}
    files.write_state(path, state, tmp, size)
    return {"directory": str(path), "memory_bytes": size, "vcpus": len(vcpus), "devices": sorted(devices)}


def _save_vcpu(fd: Any, msrs: list[int], xsave: int) -> dict[str, Any]:
    from kvmlite.vmm.snapshot.cpustate import save_vcpu

    try:
        return save_vcpu(fd, msrs, xsave_bytes=xsave)
    except StateError:
        raise
    except KvmliteError as exc:          # KvmError: an ioctl KVM refused, named
        raise SnapshotError(f"vCPU {fd.id}: {exc}") from None


def _save_parts(parts: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, part in parts:
        saver = getattr(part, "save_state", None)
        if saver is None:
            raise SnapshotError(f"{name}: saving its state is not supported, so this VM cannot be snapshotted")
        try:
            out[name] = saver()
        except StateError as exc:
            raise SnapshotError(str(exc) if str(exc).startswith(name) else f"{name}: {exc}") from None
    return out


def _loops(vm: "Vm") -> list["EventLoop"]:
    return [vm.event_loop, *vm.devices.device_loops]


@contextlib.contextmanager
def _held(loops: list["EventLoop"]) -> Iterator[None]:
    """Each running loop's thread waits inside a callback until the block ends."""
    release = threading.Event()
    entered: list[threading.Event] = []
    for loop in loops:
        if loop.running and not loop.on_loop_thread():
            event = threading.Event()
            entered.append(event)
            loop.call_soon(lambda event=event: (event.set(), release.wait()))
    try:
        for event in entered:
            if not event.wait(HOLD_TIMEOUT):
                raise SnapshotError(f"an I/O thread did not come to a stop within {HOLD_TIMEOUT:g} s")
        yield
    finally:
        release.set()


def _clean(path: Path) -> None:
    """Remove what a failed snapshot wrote (the directory was empty or new)."""
    for child in path.iterdir():
        with contextlib.suppress(OSError):
            child.unlink()
