"""Lay every ACPI table out in the ACPI region (ACPI 6.3 §5.2).

The builder only produces ``(guest address, bytes)`` pairs; the VMM writes
them into guest memory and reserves the region in the E820 map.

Layout, from ``layout.ACPI_RSDP_ADDR`` upwards, each table 16-byte aligned
(the FACS 64-byte aligned, §5.2.10)::

    RSDP -> XSDT -> {FADT -> {FACS, DSDT}, MADT}
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmlite.arch.x86 import layout
from kvmlite.arch.x86.acpi import tables
from kvmlite.arch.x86.acpi.config import AcpiConfig
from kvmlite.arch.x86.acpi.dsdt import dsdt
from kvmlite.arch.x86.acpi.fadt import FADT_SIZE, fadt
from kvmlite.arch.x86.acpi.madt import madt
from kvmlite.errors import ConfigError

TABLE_ALIGNMENT = 16               # Linux finds the RSDP on 16-byte boundaries
XSDT_ENTRIES = 2                   # FADT, MADT


@dataclass(frozen=True)
class AcpiImage:
    """The tables to copy into guest memory, and where the RSDP is."""

    rsdp_addr: int
    blobs: tuple[tuple[int, bytes], ...]      # (guest address, table bytes)


class _Region:
    """A bump allocator over [start, end) of guest-physical memory."""

    def __init__(self, start: int, end: int) -> None:
        self.next, self.end = start, end

    def place(self, size: int, alignment: int = TABLE_ALIGNMENT) -> int:
        addr = -(-self.next // alignment) * alignment
        if addr + size > self.end:
            raise ConfigError(f"ACPI tables do not fit below {self.end:#x}: "
                              f"{addr + size - self.end} bytes too many")
        self.next = addr + size
        return addr


def build_acpi_tables(config: AcpiConfig, start: int = layout.ACPI_RSDP_ADDR,
                      end: int = layout.ACPI_END) -> AcpiImage:
    """Every table for ``config``, laid out in [start, end).

    Raises :class:`ConfigError` if they do not fit."""
    dsdt_blob, madt_blob, facs_blob = dsdt(config), madt(config.num_cpus), tables.facs()
    region = _Region(start, end)
    rsdp_addr = region.place(tables.RSDP_SIZE)
    xsdt_addr = region.place(tables.HEADER_SIZE + XSDT_ENTRIES * tables.XSDT_ENTRY_SIZE)
    fadt_addr = region.place(FADT_SIZE)
    facs_addr = region.place(len(facs_blob), tables.FACS_ALIGNMENT)
    madt_addr = region.place(len(madt_blob))
    dsdt_addr = region.place(len(dsdt_blob))
    blobs = (
        (rsdp_addr, tables.rsdp(xsdt_addr)),
        (xsdt_addr, tables.xsdt([fadt_addr, madt_addr])),
        (fadt_addr, fadt(facs_addr, dsdt_addr, config.i8042)),
        (facs_addr, facs_blob),
        (madt_addr, madt_blob),
        (dsdt_addr, dsdt_blob),
    )
    return AcpiImage(rsdp_addr, blobs)
