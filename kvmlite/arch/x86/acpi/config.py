"""What the ACPI tables describe: a frozen configuration, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from kvmlite.arch.x86 import layout
from kvmlite.arch.x86.acpi.madt import MAX_CPUS
from kvmlite.errors import ConfigError

FOUR_GIB = 1 << 32


@dataclass(frozen=True)
class VirtioMmioDevice:
    """One virtio-mmio transport: its register window and its GSI."""

    address: int
    size: int = layout.VIRTIO_MMIO_SIZE
    gsi: int = layout.IRQ_VIRTIO_MMIO_FIRST

    def validate(self) -> None:
        if self.size <= 0 or not 0 <= self.address < self.address + self.size <= FOUR_GIB:
            raise ConfigError(f"virtio-mmio window {self.address:#x}+{self.size:#x} "
                              "must lie below 4 GiB")
        if not 0 <= self.gsi < layout.IOAPIC_PINS:
            raise ConfigError(f"virtio-mmio GSI {self.gsi} is not an IOAPIC pin "
                              f"(0..{layout.IOAPIC_PINS - 1})")


@dataclass(frozen=True)
class AcpiConfig:
    """The machine the ACPI tables describe.

    ``num_cpus``: vCPUs, local APIC ids 0..n-1 (1..254).
    ``serial_ports``: COM port numbers (1..4) to list in the DSDT, with
    the I/O base and IRQ from ``layout.PORT_COM``/``layout.IRQ_COM``.
    ``i8042``: list the PS/2 keyboard controller (and set the FADT 8042 flag).
    ``pci_mmio64``: an optional 64-bit PCI BAR window ``(start, size)``.
    ``virtio_mmio``: virtio-mmio devices, described as LNRO0005 devices.
    """

    num_cpus: int
    serial_ports: tuple[int, ...] = (1,)
    i8042: bool = True
    pci_mmio64: tuple[int, int] | None = None
    virtio_mmio: tuple[VirtioMmioDevice, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.num_cpus <= MAX_CPUS:
            raise ConfigError(f"ACPI describes 1..{MAX_CPUS} vCPUs, not {self.num_cpus}")
        if any(not 1 <= n <= len(layout.PORT_COM) for n in self.serial_ports) \
                or len(set(self.serial_ports)) != len(self.serial_ports):
            raise ConfigError(f"serial ports must be distinct COM numbers 1..4: {self.serial_ports}")
        self._validate_mmio64()
        if len(self.virtio_mmio) > layout.VIRTIO_MMIO_MAX:
            raise ConfigError(f"at most {layout.VIRTIO_MMIO_MAX} virtio-mmio devices")
        for dev in self.virtio_mmio:
            dev.validate()

    def _validate_mmio64(self) -> None:
        if self.pci_mmio64 is None:
            return
        start, size = self.pci_mmio64
        if size <= 0 or start < FOUR_GIB or start + size > 1 << 64:
            raise ConfigError(f"64-bit PCI window {start:#x}+{size:#x} must lie above 4 GiB")
