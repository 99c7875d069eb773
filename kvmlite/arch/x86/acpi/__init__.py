"""ACPI tables for x86 guests (ACPI 6.3): RSDP, XSDT, a full (not
hardware-reduced) FADT with PM1a blocks, FACS, MADT and a DSDT with a PCI
root bridge.  :func:`build_acpi_tables` turns an :class:`AcpiConfig` into
blobs for the VMM to copy into guest memory; :mod:`.pm` is the register
contract of the ACPI PM device."""

from kvmlite.arch.x86.acpi.builder import AcpiImage, build_acpi_tables
from kvmlite.arch.x86.acpi.config import AcpiConfig, VirtioMmioDevice
from kvmlite.arch.x86.acpi.pm import SLP_TYP_S5

__all__ = ["AcpiConfig", "AcpiImage", "SLP_TYP_S5", "VirtioMmioDevice", "build_acpi_tables"]
