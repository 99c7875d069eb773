"""The Linux virtio_mmio driver's register traffic (drivers/virtio/virtio_mmio.c)."""

from __future__ import annotations

from tests.unit.devices.virtio.transport.conftest import MmioRig

MAGIC, VERSION, DEVICE_ID, VENDOR_ID = 0x000, 0x004, 0x008, 0x00C
DEVICE_FEATURES, DEVICE_FEATURES_SEL, DRIVER_FEATURES, DRIVER_FEATURES_SEL = 0x010, 0x014, 0x020, 0x024
QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY, QUEUE_NOTIFY = 0x030, 0x034, 0x038, 0x044, 0x050
INTERRUPT_STATUS, INTERRUPT_ACK, STATUS = 0x060, 0x064, 0x070
QUEUE_DESC_LOW, QUEUE_DRIVER_LOW, QUEUE_DEVICE_LOW = 0x080, 0x090, 0x0A0
SHM_SEL, SHM_LEN_LOW, SHM_LEN_HIGH = 0x0AC, 0x0B0, 0x0B4
CONFIG_GENERATION, CONFIG = 0x0FC, 0x100

ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8


class VirtioMmioDriver:
    def __init__(self, rig: MmioRig) -> None:
        self.rig = rig

    def probe(self) -> bool:
        """vm_probe: magic, version 2, a device ID."""
        r = self.rig
        return r.read(MAGIC) == 0x74726976 and r.read(VERSION) == 2 and r.read(DEVICE_ID) != 0

    def status(self) -> int:
        return self.rig.read(STATUS)

    def add_status(self, bits: int) -> None:
        self.rig.write(STATUS, self.status() | bits)

    def device_features(self) -> int:
        r = self.rig
        r.write(DEVICE_FEATURES_SEL, 1)
        high = r.read(DEVICE_FEATURES)
        r.write(DEVICE_FEATURES_SEL, 0)
        return high << 32 | r.read(DEVICE_FEATURES)

    def negotiate(self, features: int) -> bool:
        r = self.rig
        r.write(STATUS, 0)
        self.add_status(ACKNOWLEDGE)
        self.add_status(DRIVER)
        r.write(DRIVER_FEATURES_SEL, 1)
        r.write(DRIVER_FEATURES, features >> 32)
        r.write(DRIVER_FEATURES_SEL, 0)
        r.write(DRIVER_FEATURES, features & 0xFFFF_FFFF)
        self.add_status(FEATURES_OK)
        return bool(self.status() & FEATURES_OK)

    def setup_queue(self, index: int, desc: int, avail: int, used: int,
                    size: int | None = None) -> bool:
        """vm_setup_vq; True if QueueReady reads 1 afterwards."""
        r = self.rig
        r.write(QUEUE_SEL, index)
        if r.read(QUEUE_READY):
            return False
        num = size if size is not None else r.read(QUEUE_NUM_MAX)
        r.write(QUEUE_NUM, num)
        for low, value in ((QUEUE_DESC_LOW, desc), (QUEUE_DRIVER_LOW, avail),
                           (QUEUE_DEVICE_LOW, used)):
            r.write(low, value & 0xFFFF_FFFF)
            r.write(low + 4, value >> 32)
        r.write(QUEUE_READY, 1)
        return bool(r.read(QUEUE_READY))

    def interrupt(self) -> int:
        """vm_interrupt: read the status, acknowledge it."""
        status = self.rig.read(INTERRUPT_STATUS)
        self.rig.write(INTERRUPT_ACK, status)
        return status
