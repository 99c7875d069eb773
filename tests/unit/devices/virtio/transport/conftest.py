"""Rigs: a virtio-pci transport plugged into a real PciRoot over real buses,
and a virtio-mmio transport on a real MMIO bus, each around a FakeDevice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from kvmlite.arch.x86 import layout
from kvmlite.devices.bus import Bus
from kvmlite.devices.interrupts import RecordingIoEventRegistrar, RecordingMsiAllocator
from kvmlite.devices.irq import RecordingIrqLine
from kvmlite.devices.pci.root import PciRoot
from kvmlite.devices.virtio.device import VirtioDevice
from kvmlite.devices.virtio.transport.mmio import VirtioMmioTransport
from kvmlite.devices.virtio.transport.pci import VirtioPciTransport
from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory
from tests.unit.devices.pci.pciguest import PciGuest
from tests.unit.devices.virtio.transport.fakes import FakeDevice
from tests.unit.devices.virtio.transport.pcidriver import VirtioPciDriver

MMIO_BASE = layout.VIRTIO_MMIO_START


@dataclass
class PciRig:
    mmio: Bus
    pio: Bus
    intx: list[RecordingIrqLine]
    root: PciRoot
    guest: PciGuest
    msi: RecordingMsiAllocator
    ioevents: RecordingIoEventRegistrar
    device: Any                 # a FakeDevice unless the test passed a real one
    transport: VirtioPciTransport
    slot: int
    driver: VirtioPciDriver

    @property
    def line(self) -> RecordingIrqLine:
        return self.intx[self.slot % 4]


def make_pci_rig(memory: GuestMemory, device: VirtioDevice | None = None,
                 loop: EventLoop | None = None) -> PciRig:
    mmio, pio = Bus("mmio"), Bus("pio")
    intx = [RecordingIrqLine() for _ in range(4)]
    root = PciRoot(mmio, pio, intx)
    guest = PciGuest(pio, mmio)
    msi, ioevents = RecordingMsiAllocator(), RecordingIoEventRegistrar()
    device = device or FakeDevice()
    transport = VirtioPciTransport(device, memory, msi, ioevents=ioevents if loop else None,
                                   loop=loop)
    slot = root.add(transport)
    guest.size_bars(slot)
    guest.enable(slot)
    return PciRig(mmio, pio, intx, root, guest, msi, ioevents, device, transport, slot,
                  VirtioPciDriver(guest, slot))


@dataclass
class MmioRig:
    bus: Bus
    irq: RecordingIrqLine
    ioevents: RecordingIoEventRegistrar
    device: Any                 # a FakeDevice unless the test passed a real one
    transport: VirtioMmioTransport

    def read(self, offset: int, size: int = 4) -> int:
        buf = bytearray(size)
        self.bus.read(MMIO_BASE + offset, memoryview(buf))
        return int.from_bytes(buf, "little")

    def write(self, offset: int, value: int, size: int = 4) -> None:
        self.bus.write(MMIO_BASE + offset, value.to_bytes(size, "little"))


def make_mmio_rig(memory: GuestMemory, device: VirtioDevice | None = None,
                  loop: EventLoop | None = None) -> MmioRig:
    bus, irq, ioevents = Bus("mmio"), RecordingIrqLine(), RecordingIoEventRegistrar()
    device = device or FakeDevice()
    transport = VirtioMmioTransport(device, memory, irq, ioevents=ioevents if loop else None,
                                    loop=loop)
    transport.attach(bus, MMIO_BASE)
    return MmioRig(bus, irq, ioevents, device, transport)


@pytest.fixture
def pci(memory: GuestMemory) -> PciRig:
    return make_pci_rig(memory)


@pytest.fixture
def mmio(memory: GuestMemory) -> MmioRig:
    return make_mmio_rig(memory)


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    ev = EventLoop("test-io")
    ev.start()
    yield ev
    ev.close()
