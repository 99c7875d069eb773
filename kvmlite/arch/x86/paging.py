"""Identity-mapped page tables for the 64-bit boot protocol.

The protocol asks for an identity mapping of the kernel, boot_params and
the command line; kvmlite maps the first ``layout.IDENTITY_MAP_GIB`` GiB
with 2 MiB pages (PML4 -> one PDPT -> one PD per GiB), which covers
everything a booting kernel touches before it builds its own tables.
"""

from __future__ import annotations

import struct

from kvmlite.arch.x86 import layout

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_PAGE_SIZE = 1 << 7      # in a PD entry: this is a 2 MiB page
PAGE_2M = 2 * layout.MiB


def identity_map_tables(gib: int = layout.IDENTITY_MAP_GIB) -> list[tuple[int, bytes]]:
    """(guest address, bytes) of PML4, PDPT and ``gib`` page directories."""
    if not 1 <= gib <= 512:
        raise ValueError("identity map must cover 1..512 GiB")
    table = struct.Struct("<512Q")
    pml4 = [0] * 512
    pml4[0] = layout.PDPT_ADDR | PTE_PRESENT | PTE_WRITABLE
    pdpt = [0] * 512
    out = [(layout.PML4_ADDR, table.pack(*pml4))]
    pds = []
    for g in range(gib):
        pd_addr = layout.PD_ADDR + g * 0x1000
        pdpt[g] = pd_addr | PTE_PRESENT | PTE_WRITABLE
        entries = [(g * 512 + i) * PAGE_2M | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE for i in range(512)]
        pds.append((pd_addr, table.pack(*entries)))
    out.append((layout.PDPT_ADDR, table.pack(*pdpt)))
    return out + pds
