"""Where a virtio-pci device keeps its structures (virtio 1.2 §4.1.4).

Everything lives in one 64-bit, non-prefetchable memory BAR (BAR 0/1; the
ISR has read side effects, so the BAR must not be prefetchable), one 4 KiB
page per structure so each can be mapped alone::

    0x0000  common configuration (struct virtio_pci_common_cfg, 0x38 bytes)
    0x1000  ISR status (1 byte)
    0x2000  device-specific configuration (up to 4 KiB)
    0x3000  notifications: queue n at 0x3000 + n * NOTIFY_OFF_MULTIPLIER
    0x4000  MSI-X table (16 bytes per vector), then the PBA on its own page
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmlite.devices.pci.config import CAP_ID_VENDOR, PciConfigError
from kvmlite.devices.pci.function import PciFunction
from kvmlite.devices.pci.msix import ENTRY_SIZE, pba_size

PAGE = 0x1000
BAR_INDEX = 0

# §4.1.4: cfg_type of the vendor-specific capabilities
CAP_COMMON_CFG = 1
CAP_NOTIFY_CFG = 2
CAP_ISR_CFG = 3
CAP_DEVICE_CFG = 4
CAP_PCI_CFG = 5

COMMON_OFFSET = 0x0000
COMMON_LENGTH = 0x38
ISR_OFFSET = 0x1000
DEVICE_OFFSET = 0x2000
DEVICE_LENGTH = 0x1000
NOTIFY_OFFSET = 0x3000
#: §4.1.4.4: queue n notifies at NOTIFY_OFFSET + n * multiplier (one dword each)
NOTIFY_OFF_MULTIPLIER = 4
MSIX_OFFSET = 0x4000
MAX_QUEUES = PAGE // NOTIFY_OFF_MULTIPLIER

# struct virtio_pci_cap (§4.1.4): offsets inside the capability
VIRTIO_CAP_LENGTH = 16
PCI_CFG_CAP_BAR = 4
PCI_CFG_CAP_OFFSET = 8
PCI_CFG_CAP_LENGTH = 12
PCI_CFG_CAP_DATA = 16


def _round_up(value: int, to: int) -> int:
    return (value + to - 1) // to * to


@dataclass(frozen=True)
class VirtioPciLayout:
    """The BAR layout for ``queues`` queues and ``vectors`` MSI-X vectors."""

    queues: int
    vectors: int

    def __post_init__(self) -> None:
        if not 1 <= self.queues <= MAX_QUEUES:
            raise PciConfigError(f"virtio-pci: {self.queues} queues (1..{MAX_QUEUES})")

    @property
    def notify_length(self) -> int:
        return self.queues * NOTIFY_OFF_MULTIPLIER

    @property
    def pba_offset(self) -> int:
        return MSIX_OFFSET + _round_up(ENTRY_SIZE * self.vectors, PAGE)

    @property
    def bar_size(self) -> int:
        end = self.pba_offset + _round_up(pba_size(self.vectors), PAGE)
        return 1 << (end - 1).bit_length()

    def notify_address(self, bar_address: int, queue: int) -> int:
        return bar_address + NOTIFY_OFFSET + queue * NOTIFY_OFF_MULTIPLIER


def _virtio_cap(cfg_type: int, offset: int, length: int, extra: bytes = b"") -> bytes:
    """struct virtio_pci_cap after cap_vndr/cap_next: cap_len, cfg_type,
    bar, id, padding[2], offset, length, then ``extra``."""
    return struct.pack("<BBBBHII", VIRTIO_CAP_LENGTH + len(extra), cfg_type, BAR_INDEX, 0, 0,
                       offset, length) + extra


def add_virtio_caps(function: PciFunction, layout: VirtioPciLayout) -> int:
    """Add the COMMON, NOTIFY, ISR, DEVICE and PCI_CFG capabilities (in that
    order) and return the offset of the PCI_CFG one."""
    config = function.config
    config.add_capability(CAP_ID_VENDOR, _virtio_cap(CAP_COMMON_CFG, COMMON_OFFSET, COMMON_LENGTH))
    config.add_capability(CAP_ID_VENDOR, _virtio_cap(
        CAP_NOTIFY_CFG, NOTIFY_OFFSET, layout.notify_length,
        struct.pack("<I", NOTIFY_OFF_MULTIPLIER)))
    config.add_capability(CAP_ID_VENDOR, _virtio_cap(CAP_ISR_CFG, ISR_OFFSET, 1))
    config.add_capability(CAP_ID_VENDOR, _virtio_cap(CAP_DEVICE_CFG, DEVICE_OFFSET, DEVICE_LENGTH))
    # §4.1.4.9: bar, offset, length and pci_cfg_data are driver-writable
    writable = bytes([0, 0, 0xFF, 0, 0, 0]) + b"\xff" * 12
    return config.add_capability(CAP_ID_VENDOR, _virtio_cap(CAP_PCI_CFG, 0, 0, bytes(4)), writable)
