"""Snapshot and restore of MSI-X: the table, the PBA and the enable and
function-mask bits, saved and restored as part of the function's state
(after its configuration space) and re-pushed to the interrupt backend
(recording vectors, and KVM vectors over a fake VM fd whose routing table
is the witness)."""

from __future__ import annotations

import json
from typing import Any, Iterable

import pytest

from kvmlite.base.state import StateError, pack_bytes
from kvmlite.devices.bus import Bus
from kvmlite.devices.irq import RecordingIrqLine
from kvmlite.devices.pci.root import PciRoot
from kvmlite.kvm import uapi
from kvmlite.vmm.interrupts import IrqRouter, KvmMsiVector
from tests.unit.devices.pci.pciguest import PciGuest
from tests.unit.devices.pci.test_msix import ENABLE, FUNCTION_MASK, MSI_ADDRESS, Driver


def new_driver() -> Driver:
    mmio, pio = Bus("mmio"), Bus("pio")
    return Driver(PciRoot(mmio, pio, [RecordingIrqLine() for _ in range(4)]), PciGuest(pio, mmio))


def save(drv: Driver) -> dict[str, Any]:
    return json.loads(json.dumps(drv.function.save_state()))


def restore(state: dict[str, Any]) -> Driver:
    """A fresh VM's function, restored as its owner would."""
    drv = new_driver()
    drv.function.restore_state(state)
    return drv


def programmed() -> Driver:
    drv = new_driver()
    drv.set_control(ENABLE)
    drv.program(0, MSI_ADDRESS | 0x1000, 0x41)
    drv.program(1, MSI_ADDRESS | 0x2000, 0x42, masked=True)
    drv.function.msix.trigger(1)                         # pending while masked
    return drv


def test_msix_restore_reprograms_vectors_from_table() -> None:
    new = restore(save(programmed()))
    vectors = new.function.vectors

    assert [(v.address, v.data, v.masked) for v in vectors[:2]] == [
        (MSI_ADDRESS | 0x1000, 0x41, False), (MSI_ADDRESS | 0x2000, 0x42, True)]
    assert vectors[2].masked is True
    new.function.msix.trigger(0)
    assert vectors[0].sent == [(MSI_ADDRESS | 0x1000, 0x41)]


def test_msix_restore_keeps_table_and_pba_as_the_guest_reads_them() -> None:
    old = programmed()
    new = restore(save(old))

    for offset in range(0, 16 * 3, 4):
        assert new.guest.mem_read(new.bar + offset, 4) == old.guest.mem_read(old.bar + offset, 4)
    assert new.pba() == old.pba() == 0b10
    assert new.control() == old.control() == ENABLE | 2


def test_msix_restore_pending_vector_delivers_once_unmasked() -> None:
    new = restore(save(programmed()))

    assert new.function.vectors[1].sent == []
    new.guest.mem_write(new.bar + 16 + 12, 4, 0)
    assert new.function.vectors[1].sent == [(MSI_ADDRESS | 0x2000, 0x42)]
    assert new.pba() == 0


def test_msix_restore_keeps_function_mask() -> None:
    old = programmed()
    old.set_control(ENABLE | FUNCTION_MASK)
    new = restore(save(old))

    assert new.function.vectors[0].masked is True
    new.function.msix.trigger(0)
    new.set_control(ENABLE)
    assert new.function.vectors[0].sent == [(MSI_ADDRESS | 0x1000, 0x41)]


def test_msix_restore_disabled_leaves_every_vector_masked() -> None:
    old = new_driver()
    old.program(0, MSI_ADDRESS, 0x30)                    # unmasked entry, MSI-X off
    new = restore(save(old))

    assert new.function.vectors[0].masked is True
    new.set_control(ENABLE)
    assert new.function.vectors[0].masked is False


# --- bad state ---

def _bad_table(s: dict[str, Any]) -> None:
    table = bytearray(16 * 3)
    table[12] = 0x02                                      # a reserved vector control bit
    s["msix"]["table"] = pack_bytes(table)


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("msix"), "pci msix-sample: saved state lacks 'msix'"),
    (lambda s: s["msix"].pop("table"), "pci msix-sample msix: saved state lacks 'table'"),
    (lambda s: s["msix"].update(table=pack_bytes(bytes(16))), "table: 16 bytes, expected 48"),
    (_bad_table, "table entry 0 has reserved bits set"),
    (lambda s: s["msix"].update(pba=pack_bytes(b"\x08" + bytes(7))), "pba has bits past vector 2"),
    (lambda s: s["msix"].update(pba=pack_bytes(b"\x00")), "pba: 1 bytes, expected 8"),
    (lambda s: s["msix"].update(enabled=False), "disagree with message control"),
    (lambda s: s["msix"].update(function_masked="no"), "function_masked is str"),
])
def test_msix_restore_rejects_bad_state(change: Any, words: str) -> None:
    state = save(programmed())
    change(state)
    new = new_driver()
    before = new.bar

    with pytest.raises(StateError) as info:
        new.function.restore_state(state)
    assert words in str(info.value)
    assert all(v.masked and (v.address, v.data) == (0, 0) for v in new.function.vectors)
    assert new.control() == 2 and new.guest.bar_address(new.slot, 0) == before   # config put back


def test_msix_restore_alone_before_config_space_is_refused() -> None:
    state = save(programmed())
    with pytest.raises(StateError, match="msix-sample msix: .*restore the configuration space first"):
        new_driver().function.msix.restore_state(state["msix"])


# --- the KVM backend: routes re-pushed through IrqRouter ---

class FakeVmFd:
    """The VmFd calls KvmMsiVector and IrqRouter make, recorded."""

    def __init__(self) -> None:
        self.routes: dict[int, tuple[int, int]] = {}
        self.irqfds: set[int] = set()

    def set_gsi_routing(self, entries: Iterable[Any]) -> None:
        self.routes = {e.gsi: (e.u.msi.address_hi << 32 | e.u.msi.address_lo, e.u.msi.data)
                       for e in entries if e.type == uapi.KVM_IRQ_ROUTING_MSI}

    def register_irqfd(self, fd: int, gsi: int, resamplefd: int | None = None,
                       deassign: bool = False) -> None:
        (self.irqfds.discard if deassign else self.irqfds.add)(gsi)


def test_msix_restore_reinstalls_kvm_msi_routes() -> None:
    vm = FakeVmFd()
    router = IrqRouter(vm)  # type: ignore[arg-type]
    vectors = [KvmMsiVector(vm, router) for _ in range(3)]  # type: ignore[arg-type]
    old = programmed()
    state = save(old)

    new = new_driver()
    new.function.msix.vectors = vectors                  # a fresh VM's KVM-backed vectors
    new.function.restore_state(state)
    try:
        gsi0, gsi1 = vectors[0].gsi, vectors[1].gsi
        assert vm.routes == {gsi0: (MSI_ADDRESS | 0x1000, 0x41)}   # the unmasked entry, routed
        assert vectors[1].pending                                   # masked: no route yet, pending
        new.guest.mem_write(new.bar + 16 + 12, 4, 0)
        assert vm.routes[gsi1] == (MSI_ADDRESS | 0x2000, 0x42)
        assert not vectors[1].pending
    finally:
        for vector in vectors:
            vector.close()
