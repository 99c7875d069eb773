"""The guest's physical memory map as firmware would report it (E820).

The same map feeds boot_params.e820_table (bzImage), hvm_start_info's
memmap (PVH) and nothing else, so the two boot paths always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmlite.arch.x86 import layout

E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: int


def memory_map(ram_ranges: list[tuple[int, int]]) -> list[E820Entry]:
    """The E820 map for a guest with RAM at ``ram_ranges`` (start, length).

    Low memory is split around the EBDA (MP table) and the legacy
    VGA/BIOS hole, which holds the ACPI tables; the 32-bit PCI hole is not
    RAM and not listed."""
    entries: list[E820Entry] = []
    for start, length in ram_ranges:
        end = start + length
        if start == 0:
            entries.append(E820Entry(0, layout.EBDA_START, E820_RAM))
            entries.append(E820Entry(layout.EBDA_START, layout.VGA_HOLE_START - layout.EBDA_START,
                                     E820_RESERVED))
            entries.append(E820Entry(layout.ACPI_START, layout.BIOS_END - layout.ACPI_START,
                                     E820_RESERVED))
            if end > layout.HIGH_MEMORY_START:
                entries.append(E820Entry(layout.HIGH_MEMORY_START, end - layout.HIGH_MEMORY_START,
                                         E820_RAM))
        else:
            entries.append(E820Entry(start, length, E820_RAM))
    return entries


def ram_total(entries: list[E820Entry]) -> int:
    return sum(e.size for e in entries if e.type == E820_RAM)
