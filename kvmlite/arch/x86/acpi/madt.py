"""The Multiple APIC Description Table (ACPI 6.3 §5.2.12).

Linux kernels built without MP-table parsing find their CPUs, the IOAPIC
and the ISA interrupt overrides here and nowhere else.
"""

from __future__ import annotations

import struct

from kvmlite.arch.x86 import layout
from kvmlite.arch.x86.acpi.tables import sdt

MADT_REVISION = 5                  # ACPI 6.3
MADT_PCAT_COMPAT = 1 << 0          # §5.2.12 Table 5.44: dual 8259s are present

# §5.2.12 Table 5.45 Interrupt Controller Structure Types
TYPE_LOCAL_APIC = 0
TYPE_IO_APIC = 1
TYPE_INTERRUPT_OVERRIDE = 2
TYPE_LOCAL_APIC_NMI = 4

LOCAL_APIC_ENABLED = 1 << 0        # §5.2.12.2 Table 5.47
ALL_PROCESSORS = 0xFF              # §5.2.12.7: ACPI Processor UID 0xFF = all
LINT1 = 1

# §5.2.12.5 Table 5.50 MPS INTI Flags
INTI_ACTIVE_HIGH = 0b01
INTI_ACTIVE_LOW = 0b11
INTI_EDGE = 0b01 << 2
INTI_LEVEL = 0b11 << 2

ISA_BUS = 0
ISA_IRQ_PIT = 0
GSI_PIT = 2                        # the PIT's output reaches IOAPIC pin 2

# xAPIC ids are 8 bits and 0xFF is the broadcast id; the IOAPIC takes the
# id after the last CPU, so at most 254 vCPUs (x2APIC entries would lift it).
MAX_CPUS = 254


def ioapic_id(num_cpus: int) -> int:
    """The IOAPIC's id: the first one after the vCPUs' local APIC ids."""
    return num_cpus


def madt(num_cpus: int) -> bytes:
    """The MADT for ``num_cpus`` vCPUs with local APIC ids 0..n-1 (ACPI
    Processor UID = APIC id = vCPU index) and one IOAPIC at GSI base 0."""
    if not 1 <= num_cpus <= MAX_CPUS:
        raise ValueError(f"the MADT describes 1..{MAX_CPUS} vCPUs, not {num_cpus}")
    body = struct.pack("<II", layout.LAPIC_ADDR, MADT_PCAT_COMPAT)
    body += b"".join(local_apic(cpu) for cpu in range(num_cpus))
    body += io_apic(ioapic_id(num_cpus), layout.IOAPIC_ADDR, 0)
    body += interrupt_override(ISA_IRQ_PIT, GSI_PIT, INTI_EDGE | INTI_ACTIVE_HIGH)
    body += interrupt_override(layout.IRQ_ACPI_SCI, layout.IRQ_ACPI_SCI,
                               INTI_LEVEL | INTI_ACTIVE_HIGH)
    body += local_apic_nmi(ALL_PROCESSORS, INTI_EDGE | INTI_ACTIVE_HIGH, LINT1)
    return sdt(b"APIC", MADT_REVISION, body)


def local_apic(cpu: int) -> bytes:
    """Processor Local APIC structure (§5.2.12.2), enabled."""
    return struct.pack("<BBBBI", TYPE_LOCAL_APIC, 8, cpu, cpu, LOCAL_APIC_ENABLED)


def io_apic(apic_id: int, address: int, gsi_base: int) -> bytes:
    """I/O APIC structure (§5.2.12.3)."""
    return struct.pack("<BBBBII", TYPE_IO_APIC, 12, apic_id, 0, address, gsi_base)


def interrupt_override(irq: int, gsi: int, flags: int) -> bytes:
    """Interrupt Source Override structure (§5.2.12.5) for an ISA IRQ."""
    return struct.pack("<BBBBIH", TYPE_INTERRUPT_OVERRIDE, 10, ISA_BUS, irq, gsi, flags)


def local_apic_nmi(processor_uid: int, flags: int, lint: int) -> bytes:
    """Local APIC NMI structure (§5.2.12.7)."""
    return struct.pack("<BBBHB", TYPE_LOCAL_APIC_NMI, 6, processor_uid, flags, lint)
