"""The Intel MultiProcessor Specification 1.4 tables, for kernels that
boot without ACPI (``acpi=off``, or built without it).

Linux looks for the MP Floating Pointer Structure in the last KiB of base
memory (MP spec §4: "the last kilobyte of system base memory"), so both
the pointer and the configuration table live in the 1 KiB at
``layout.MPTABLE_ADDR`` (0x9FC00..0xA0000, reserved in the E820 map).

Size and the vCPU limit: the pointer (16 bytes), the table header (44),
two bus entries, the IOAPIC entry, 11 ISA interrupt entries and the two
local interrupt entries take 188 bytes; each vCPU adds 20, each PCI slot
32 (INTA..INTD) and each extra GSI 8.  With no PCI slot and no extra GSI
that is 41 vCPUs; :func:`build_mptable` raises :class:`ConfigError` when a
configuration does not fit rather than spilling into the VGA hole.
(Firecracker and kvmtool cap their MP tables too; ACPI has no such limit.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmlite.arch.x86 import layout
from kvmlite.arch.x86.acpi.checksum import with_checksum
from kvmlite.arch.x86.acpi.dsdt import pci_intx_gsi   # the _PRT's swizzle, shared
from kvmlite.arch.x86.acpi.madt import ioapic_id      # the MADT's IOAPIC id, shared
from kvmlite.errors import ConfigError

MPTABLE_SIZE_MAX = layout.VGA_HOLE_START - layout.MPTABLE_ADDR   # 1 KiB
SPEC_REV = 4                       # MP spec 1.4
FLOATING_SIGNATURE = b"_MP_"
FLOATING_FORMAT = "<4sIBBB5B"      # §4.1, 16 bytes
FLOATING_SIZE = struct.calcsize(FLOATING_FORMAT)
FLOATING_CHECKSUM_OFFSET = 10
TABLE_SIGNATURE = b"PCMP"
HEADER_FORMAT = "<4sHBB8s12sIHHIHBx"   # §4.2, 44 bytes
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)
HEADER_CHECKSUM_OFFSET = 7
OEM_ID = b"KVMLITE "
PRODUCT_ID = b"KVMLITE VM  "

# §4.3 Table 4-3 base MP configuration table entry types
ENTRY_PROCESSOR = 0
ENTRY_BUS = 1
ENTRY_IOAPIC = 2
ENTRY_IO_INTERRUPT = 3
ENTRY_LOCAL_INTERRUPT = 4
PROCESSOR_ENTRY_SIZE = 20
OTHER_ENTRY_SIZE = 8

CPU_ENABLED = 1 << 0               # §4.3.1 CPU flags: EN
CPU_BOOTSTRAP = 1 << 1             # BP
CPU_SIGNATURE = 0x600              # family 6, model 0, stepping 0
CPU_FEATURES = (1 << 0) | (1 << 9)  # CPUID.1:EDX FPU and APIC
LAPIC_VERSION = 0x14               # KVM's local APIC reports version 0x14
IOAPIC_VERSION = 0x11              # KVM's IOAPIC reports version 0x11
IOAPIC_ENABLED = 1 << 0

BUS_PCI = 0
BUS_ISA = 1
# §4.3.4 Table 4-10 interrupt types, Table 4-11 flags
INT_VECTORED = 0
INT_NMI = 1
INT_EXTINT = 3
FLAGS_CONFORMS = 0
FLAGS_ACTIVE_HIGH = 0b01
FLAGS_ACTIVE_LOW = 0b11
FLAGS_EDGE = 0b01 << 2
FLAGS_LEVEL = 0b11 << 2
ALL_LOCAL_APICS = 0xFF

ISA_IRQS = 16
ISA_IRQ_CASCADE = 2                # the slave 8259's cascade: no device
ISA_IRQ_PIT = 0
IOAPIC_PIN_PIT = 2                 # the PIT's output reaches IOAPIC pin 2
PCI_PINS = 4
PCI_SLOTS = range(1, 32)


@dataclass(frozen=True)
class MpTableConfig:
    """``num_cpus`` vCPUs with APIC ids 0..n-1 (vCPU 0 the bootstrap one);
    ``pci_slots``: populated PCI slots on bus 0, each given INTA..INTD;
    ``extra_gsis``: IOAPIC pins above 15 in use (virtio-mmio), declared
    edge-triggered, active high like ISA interrupts."""

    num_cpus: int
    pci_slots: tuple[int, ...] = ()
    extra_gsis: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.num_cpus < 1:
            raise ConfigError("the MP table needs at least one vCPU")
        if any(slot not in PCI_SLOTS for slot in self.pci_slots):
            raise ConfigError(f"PCI slots are 1..31: {self.pci_slots}")
        if any(not ISA_IRQS <= gsi < layout.IOAPIC_PINS for gsi in self.extra_gsis):
            raise ConfigError(f"extra GSIs are IOAPIC pins 16..{layout.IOAPIC_PINS - 1}: "
                              f"{self.extra_gsis}")


def isa_irqs() -> list[int]:
    """ISA IRQs given an I/O interrupt entry: all but the cascade and the
    four lines PCI INTx uses (level, active low: they cannot also be ISA)."""
    return [irq for irq in range(ISA_IRQS)
            if irq != ISA_IRQ_CASCADE and irq not in layout.IRQ_PCI_INTX]


def mptable_size(config: MpTableConfig) -> int:
    """Bytes the floating pointer and configuration table take."""
    entries = (2 + 1 + len(isa_irqs()) + PCI_PINS * len(config.pci_slots)
               + len(config.extra_gsis) + 2)
    return (FLOATING_SIZE + HEADER_SIZE + PROCESSOR_ENTRY_SIZE * config.num_cpus
            + OTHER_ENTRY_SIZE * entries)


def build_mptable(config: MpTableConfig, address: int = layout.MPTABLE_ADDR,
                  size_max: int = MPTABLE_SIZE_MAX) -> tuple[int, bytes]:
    """The floating pointer at ``address`` followed by the configuration
    table; returns ``(address, bytes)`` for the VMM to write.

    Raises :class:`ConfigError` if they do not fit in ``size_max`` bytes."""
    needed = mptable_size(config)
    if needed > size_max:
        raise ConfigError(f"MP table for {config.num_cpus} vCPUs, {len(config.pci_slots)} "
                          f"PCI slots and {len(config.extra_gsis)} extra GSIs needs "
                          f"{needed} bytes; the EBDA area holds {size_max}")
    table_addr = address + FLOATING_SIZE
    blob = floating_pointer(table_addr) + config_table(config)
    return address, blob


def floating_pointer(table_addr: int) -> bytes:
    """MP Floating Pointer Structure (§4.1): feature byte 1 = 0 (a
    configuration table is present), byte 2 IMCRP clear (virtual wire mode)."""
    raw = struct.pack(FLOATING_FORMAT, FLOATING_SIGNATURE, table_addr, FLOATING_SIZE // 16,
                      SPEC_REV, 0, 0, 0, 0, 0, 0)
    return with_checksum(raw, FLOATING_CHECKSUM_OFFSET)


def config_table(config: MpTableConfig) -> bytes:
    """MP Configuration Table (§4.2): header, then entries sorted by type."""
    entries = [*processors(config.num_cpus), *buses(),
               ioapic(ioapic_id(config.num_cpus)),
               *io_interrupts(config), *local_interrupts()]
    body = b"".join(entries)
    header = struct.pack(HEADER_FORMAT, TABLE_SIGNATURE, HEADER_SIZE + len(body), SPEC_REV, 0,
                         OEM_ID, PRODUCT_ID, 0, 0, len(entries), layout.LAPIC_ADDR, 0, 0)
    return with_checksum(header + body, HEADER_CHECKSUM_OFFSET)


def processors(num_cpus: int) -> list[bytes]:
    """Processor entries (§4.3.1): all enabled, vCPU 0 the bootstrap processor."""
    return [struct.pack("<BBBBII8x", ENTRY_PROCESSOR, cpu, LAPIC_VERSION,
                        CPU_ENABLED | (CPU_BOOTSTRAP if cpu == 0 else 0),
                        CPU_SIGNATURE, CPU_FEATURES)
            for cpu in range(num_cpus)]


def buses() -> list[bytes]:
    """Bus entries (§4.3.2): PCI bus 0 and the ISA bus."""
    return [struct.pack("<BB6s", ENTRY_BUS, BUS_PCI, b"PCI   "),
            struct.pack("<BB6s", ENTRY_BUS, BUS_ISA, b"ISA   ")]


def ioapic(apic_id: int) -> bytes:
    """I/O APIC entry (§4.3.3)."""
    return struct.pack("<BBBBI", ENTRY_IOAPIC, apic_id, IOAPIC_VERSION, IOAPIC_ENABLED,
                       layout.IOAPIC_ADDR)


def io_interrupt(flags: int, bus: int, bus_irq: int, apic_id: int, pin: int) -> bytes:
    """I/O Interrupt Assignment entry (§4.3.4), vectored (INT)."""
    return struct.pack("<BBHBBBB", ENTRY_IO_INTERRUPT, INT_VECTORED, flags, bus, bus_irq,
                       apic_id, pin)


def io_interrupts(config: MpTableConfig) -> list[bytes]:
    """ISA IRQs (IRQ0 on pin 2, the rest identity), PCI INTx and extra GSIs."""
    apic = ioapic_id(config.num_cpus)
    isa = [io_interrupt(FLAGS_CONFORMS, BUS_ISA, irq, apic,
                        IOAPIC_PIN_PIT if irq == ISA_IRQ_PIT else irq) for irq in isa_irqs()]
    pci = [io_interrupt(FLAGS_LEVEL | FLAGS_ACTIVE_LOW, BUS_PCI, (slot << 2) | pin, apic,
                        pci_intx_gsi(slot, pin))
           for slot in config.pci_slots for pin in range(PCI_PINS)]
    extra = [io_interrupt(FLAGS_EDGE | FLAGS_ACTIVE_HIGH, BUS_ISA, gsi, apic, gsi)
             for gsi in config.extra_gsis]
    return isa + pci + extra


def local_interrupts() -> list[bytes]:
    """Local Interrupt Assignment entries (§4.3.5): ExtINT on LINT0 and
    NMI on LINT1 of every local APIC (virtual wire mode, §3.6.2.2)."""
    return [struct.pack("<BBHBBBB", ENTRY_LOCAL_INTERRUPT, INT_EXTINT, FLAGS_CONFORMS,
                        BUS_ISA, 0, ALL_LOCAL_APICS, 0),
            struct.pack("<BBHBBBB", ENTRY_LOCAL_INTERRUPT, INT_NMI, FLAGS_CONFORMS,
                        BUS_ISA, 0, ALL_LOCAL_APICS, 1)]
