"""The Linux virtio-pci modern driver's register traffic
(drivers/virtio/virtio_pci_modern*.c), over :class:`PciGuest`."""

from __future__ import annotations

from dataclasses import dataclass

from tests.unit.devices.pci.pciguest import PciGuest

VENDOR_CAP = 0x09
MSIX_CAP = 0x11
COMMON, NOTIFY, ISR, DEVICE, PCI_CFG = 1, 2, 3, 4, 5

# struct virtio_pci_common_cfg offsets
DFSELECT, DF, GFSELECT, GF, MSIX_CONFIG, NUM_QUEUES = 0x00, 0x04, 0x08, 0x0C, 0x10, 0x12
STATUS, CFG_GENERATION, Q_SELECT, Q_SIZE, Q_MSIX, Q_ENABLE, Q_NOFF = (
    0x14, 0x15, 0x16, 0x18, 0x1A, 0x1C, 0x1E)
Q_DESCLO, Q_DESCHI, Q_AVAILLO, Q_AVAILHI, Q_USEDLO, Q_USEDHI = 0x20, 0x24, 0x28, 0x2C, 0x30, 0x34

ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET, FAILED = 1, 2, 4, 8, 64, 128
NO_VECTOR = 0xFFFF


@dataclass(frozen=True)
class VirtioCap:
    cfg_type: int
    bar: int
    offset: int
    length: int
    position: int                  # where the capability sits in config space
    multiplier: int = 0            # notify_off_multiplier (NOTIFY only)


class VirtioPciDriver:
    """One virtio-pci function as the Linux driver sees it."""

    def __init__(self, guest: PciGuest, slot: int) -> None:
        self.guest = guest
        self.slot = slot
        self.caps = self._find_caps()
        self.msix_cap = dict(guest.capabilities(slot)).get(MSIX_CAP)

    def _find_caps(self) -> dict[int, VirtioCap]:
        """virtio_pci_find_capability: the first cap of each cfg_type."""
        found: dict[int, VirtioCap] = {}
        g, s = self.guest, self.slot
        for cap_id, pos in g.capabilities(s):
            if cap_id != VENDOR_CAP:
                continue
            cfg_type = g.cfg_read(s, pos + 3, 1)
            multiplier = g.cfg_read(s, pos + 16, 4) if cfg_type == NOTIFY else 0
            found.setdefault(cfg_type, VirtioCap(cfg_type, g.cfg_read(s, pos + 4, 1),
                                                 g.cfg_read(s, pos + 8, 4),
                                                 g.cfg_read(s, pos + 12, 4), pos, multiplier))
        return found

    def bar_base(self, cfg_type: int) -> int:
        cap = self.caps[cfg_type]
        return self.guest.bar_address(self.slot, cap.bar) + cap.offset

    # --- register access ---

    def read(self, offset: int, size: int) -> int:
        return self.guest.mem_read(self.bar_base(COMMON) + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.guest.mem_write(self.bar_base(COMMON) + offset, size, value)

    def status(self) -> int:
        return self.read(STATUS, 1)

    def add_status(self, bits: int) -> None:
        self.write(STATUS, 1, self.status() | bits)

    def reset(self) -> None:
        self.write(STATUS, 1, 0)
        assert self.status() == 0

    def device_features(self) -> int:
        self.write(DFSELECT, 4, 0)
        low = self.read(DF, 4)
        self.write(DFSELECT, 4, 1)
        return self.read(DF, 4) << 32 | low

    def set_driver_features(self, features: int) -> None:
        self.write(GFSELECT, 4, 0)
        self.write(GF, 4, features & 0xFFFF_FFFF)
        self.write(GFSELECT, 4, 1)
        self.write(GF, 4, features >> 32)

    def negotiate(self, features: int) -> bool:
        """virtio_dev_probe up to FEATURES_OK; True if the device kept it."""
        self.reset()
        self.add_status(ACKNOWLEDGE)
        self.add_status(DRIVER)
        self.set_driver_features(features)
        self.add_status(FEATURES_OK)
        return bool(self.status() & FEATURES_OK)

    def setup_queue(self, index: int, desc: int, avail: int, used: int, size: int | None = None,
                    vector: int = NO_VECTOR) -> int:
        """setup_vq: returns the vector read back."""
        self.write(Q_SELECT, 2, index)
        if size is not None:
            self.write(Q_SIZE, 2, size)
        self.write(Q_MSIX, 2, vector)
        readback = self.read(Q_MSIX, 2)
        for lo, value in ((Q_DESCLO, desc), (Q_AVAILLO, avail), (Q_USEDLO, used)):
            self.write(lo, 4, value & 0xFFFF_FFFF)
            self.write(lo + 4, 4, value >> 32)
        return readback

    def enable_queue(self, index: int) -> None:
        self.write(Q_SELECT, 2, index)
        self.write(Q_ENABLE, 2, 1)

    def queue_enabled(self, index: int) -> bool:
        self.write(Q_SELECT, 2, index)
        return bool(self.read(Q_ENABLE, 2))

    def notify_address(self, index: int) -> int:
        self.write(Q_SELECT, 2, index)
        return self.bar_base(NOTIFY) + self.read(Q_NOFF, 2) * self.caps[NOTIFY].multiplier

    def notify(self, index: int) -> None:
        """vp_notify: iowrite16(queue index, notify address)."""
        self.guest.mem_write(self.notify_address(index), 2, index)

    def read_isr(self) -> int:
        return self.guest.mem_read(self.bar_base(ISR), 1)

    def read_config(self, offset: int, size: int) -> int:
        return self.guest.mem_read(self.bar_base(DEVICE) + offset, size)

    # --- MSI-X (drivers/pci/msi) ---

    def msix_control(self, value: int) -> None:
        assert self.msix_cap is not None
        self.guest.cfg_write(self.slot, self.msix_cap + 2, 2, value)

    def msix_table(self) -> int:
        assert self.msix_cap is not None
        table = self.guest.cfg_read(self.slot, self.msix_cap + 4, 4)
        return self.guest.bar_address(self.slot, table & 7) + (table & ~7)

    def program_vector(self, index: int, address: int, data: int) -> None:
        entry = self.msix_table() + 16 * index
        self.guest.mem_write(entry, 4, address & 0xFFFF_FFFF)
        self.guest.mem_write(entry + 4, 4, address >> 32)
        self.guest.mem_write(entry + 8, 4, data)
        self.guest.mem_write(entry + 12, 4, 0)

    def enable_msix(self, vectors: int) -> None:
        """pci_alloc_irq_vectors(MSI-X): enable with the function masked,
        program entries, then unmask the function."""
        self.msix_control(0x8000 | 0x4000)
        for i in range(vectors):
            self.program_vector(i, 0xFEE0_0000, 0x40 + i)
        self.msix_control(0x8000)
