from __future__ import annotations

import pytest

from kvmlite.devices.bus import Bus
from kvmlite.devices.irq import RecordingIrqLine
from kvmlite.devices.pci.root import PciRoot
from tests.unit.devices.pci.pciguest import PciGuest


@pytest.fixture
def buses() -> tuple[Bus, Bus]:
    return Bus("mmio"), Bus("pio")


@pytest.fixture
def intx() -> list[RecordingIrqLine]:
    return [RecordingIrqLine() for _ in range(4)]


@pytest.fixture
def root(buses: tuple[Bus, Bus], intx: list[RecordingIrqLine]) -> PciRoot:
    mmio, pio = buses
    return PciRoot(mmio, pio, intx)


@pytest.fixture
def guest(buses: tuple[Bus, Bus]) -> PciGuest:
    mmio, pio = buses
    return PciGuest(pio, mmio)
