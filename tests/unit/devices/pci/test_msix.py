"""MSI-X capability, table and PBA (PCI Local Bus 3.0 §6.8.2), programmed
through configuration mechanism #1 and the BAR as a driver does."""

from __future__ import annotations

import pytest

from kvmlite.devices.interrupts import RecordingMsiVector
from kvmlite.devices.pci.config import Bar, BarKind, PciConfigError
from kvmlite.devices.pci.function import PciFunction
from kvmlite.devices.pci.msix import MsixCapability
from kvmlite.devices.pci.root import PciRoot
from tests.unit.devices.pci.pciguest import PciGuest
from tests.unit.devices.pci.sample import SAMPLE_IDS

VECTORS = 3
PBA_OFFSET = 0x800
ENABLE = 0x8000
FUNCTION_MASK = 0x4000
MSI_ADDRESS = 0xFEE0_0000


class MsixFunction(PciFunction):
    def __init__(self) -> None:
        super().__init__(SAMPLE_IDS, "msix-sample")
        self.config.add_bar(Bar(0, 0x1000, BarKind.MEM32))
        self.vectors = [RecordingMsiVector(i) for i in range(VECTORS)]
        self.msix = MsixCapability(self, self.vectors, 0, 0x000, PBA_OFFSET)

    def bar_read(self, index: int, offset: int, data: memoryview) -> None:
        if offset >= PBA_OFFSET:
            self.msix.pba_read(offset - PBA_OFFSET, data)
        else:
            self.msix.table_read(offset, data)

    def bar_write(self, index: int, offset: int, data: bytes) -> None:
        if offset < PBA_OFFSET:
            self.msix.table_write(offset, data)


class Driver:
    """What drivers/pci/msi/msi.c does with the capability and table."""

    def __init__(self, root: PciRoot, guest: PciGuest) -> None:
        self.function = MsixFunction()
        self.guest = guest
        self.slot = root.add(self.function)
        guest.enable(self.slot)
        self.bar = guest.bar_address(self.slot, 0)
        self.cap = dict(guest.capabilities(self.slot))[0x11]

    def control(self) -> int:
        return self.guest.cfg_read(self.slot, self.cap + 2, 2)

    def set_control(self, value: int) -> None:
        self.guest.cfg_write(self.slot, self.cap + 2, 2, value)

    def program(self, index: int, address: int, data: int, masked: bool = False) -> None:
        base = self.bar + 16 * index
        self.guest.mem_write(base + 12, 4, 1)                 # mask while changing
        self.guest.mem_write(base + 0, 4, address & 0xFFFF_FFFF)
        self.guest.mem_write(base + 4, 4, address >> 32)
        self.guest.mem_write(base + 8, 4, data)
        self.guest.mem_write(base + 12, 4, int(masked))

    def pba(self) -> int:
        return self.guest.mem_read(self.bar + PBA_OFFSET, 8)


@pytest.fixture
def drv(root: PciRoot, guest: PciGuest) -> Driver:
    return Driver(root, guest)


def test_msix_capability_describes_table_and_pba(drv: Driver) -> None:
    table = drv.guest.cfg_read(drv.slot, drv.cap + 4, 4)
    pba = drv.guest.cfg_read(drv.slot, drv.cap + 8, 4)

    assert drv.control() & 0x7FF == VECTORS - 1
    assert (table & 7, table & ~7) == (0, 0x000)
    assert (pba & 7, pba & ~7) == (0, PBA_OFFSET)


def test_msix_table_size_field_is_read_only(drv: Driver) -> None:
    drv.set_control(0xFFFF)

    assert drv.control() == ENABLE | FUNCTION_MASK | (VECTORS - 1)


def test_msix_entries_start_masked(drv: Driver) -> None:
    controls = [drv.guest.mem_read(drv.bar + 16 * i + 12, 4) for i in range(VECTORS)]

    assert controls == [1] * VECTORS
    assert all(v.masked for v in drv.function.vectors)


def test_msix_programmed_entry_configures_vector(drv: Driver) -> None:
    drv.program(1, MSI_ADDRESS | 0x1000, 0x4041)

    vector = drv.function.vectors[1]
    assert (vector.address, vector.data) == (MSI_ADDRESS | 0x1000, 0x4041)
    assert drv.guest.mem_read(drv.bar + 16 + 8, 4) == 0x4041


def test_msix_unmasked_entry_stays_masked_until_enable(drv: Driver) -> None:
    drv.program(0, MSI_ADDRESS, 0x30)

    before = drv.function.vectors[0].masked
    drv.set_control(ENABLE)

    assert before is True
    assert drv.function.vectors[0].masked is False


def test_msix_trigger_while_masked_sets_pba_and_unmask_delivers(drv: Driver) -> None:
    drv.set_control(ENABLE)
    drv.program(2, MSI_ADDRESS, 0x55, masked=True)

    drv.function.msix.trigger(2)
    pending = drv.pba()
    drv.guest.mem_write(drv.bar + 16 * 2 + 12, 4, 0)

    assert pending == 0b100
    assert drv.function.vectors[2].sent == [(MSI_ADDRESS, 0x55)]
    assert drv.pba() == 0


def test_msix_function_mask_holds_all_vectors(drv: Driver) -> None:
    drv.set_control(ENABLE | FUNCTION_MASK)
    drv.program(0, MSI_ADDRESS, 0x41)

    drv.function.msix.trigger(0)
    held = list(drv.function.vectors[0].sent)
    drv.set_control(ENABLE)

    assert held == []
    assert drv.function.vectors[0].sent == [(MSI_ADDRESS, 0x41)]


def test_msix_qword_write_sets_both_address_halves(drv: Driver) -> None:
    drv.guest.mem_write(drv.bar, 8, 0x0000_0001_FEE0_1000)

    assert drv.function.vectors[0].address == 0x1_FEE0_1000
    assert drv.guest.mem_read(drv.bar, 8) == 0x0000_0001_FEE0_1000


def test_msix_address_low_bits_and_reserved_control_bits_read_zero(drv: Driver) -> None:
    drv.guest.mem_write(drv.bar, 4, MSI_ADDRESS | 0x3)
    drv.guest.mem_write(drv.bar + 12, 4, 0xFFFF_FFFE)

    assert drv.guest.mem_read(drv.bar, 4) == MSI_ADDRESS
    assert drv.guest.mem_read(drv.bar + 12, 4) == 0


@pytest.mark.parametrize("offset,size", [(8, 1), (8, 2), (6, 4), (4, 8), (16 * VECTORS, 4)])
def test_msix_bad_table_access_is_ignored(drv: Driver, offset: int, size: int) -> None:
    drv.guest.mem_write(drv.bar + offset, size, (1 << (8 * size)) - 1)

    value = drv.guest.mem_read(drv.bar + offset, size)

    assert value == 0
    assert all((v.address, v.data) == (0, 0) for v in drv.function.vectors)


def test_msix_pba_write_is_ignored(drv: Driver) -> None:
    drv.guest.mem_write(drv.bar + PBA_OFFSET, 8, 0xFFFF)

    assert drv.pba() == 0


def test_msix_trigger_past_table_is_ignored(drv: Driver) -> None:
    drv.set_control(ENABLE)

    drv.function.msix.trigger(VECTORS)
    drv.function.msix.trigger(-1)

    assert all(not v.sent and not v.pending for v in drv.function.vectors)


def test_msix_disable_masks_vectors_again(drv: Driver) -> None:
    drv.set_control(ENABLE)
    drv.program(0, MSI_ADDRESS, 1)

    drv.set_control(0)

    assert drv.function.vectors[0].masked is True
    assert drv.function.msix.enabled is False


def test_msix_no_vectors_raises() -> None:
    function = PciFunction(SAMPLE_IDS, "x")

    with pytest.raises(PciConfigError):
        MsixCapability(function, [], 0, 0, 0x800)
