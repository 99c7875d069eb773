"""Resource data descriptors (ACPI 6.3 §6.4) for _CRS ResourceTemplates.

Each function returns one encoded descriptor; :func:`resource_template`
joins them, appends the End Tag with its checksum and wraps the result in
an AML Buffer, which is what ``ResourceTemplate () {...}`` compiles to.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from kvmlite.arch.x86.acpi import aml
from kvmlite.arch.x86.acpi.checksum import checksum

# §6.4.2 small resource tags: (item name << 3) | length
SMALL_IRQ_NO_FLAGS = (0x04 << 3) | 2
SMALL_IO = (0x08 << 3) | 7
SMALL_END_TAG = (0x0F << 3) | 1
# §6.4.3 large resource tags: 0x80 | item name
LARGE_MEMORY32_FIXED = 0x86
LARGE_DWORD_ADDRESS = 0x87
LARGE_WORD_ADDRESS = 0x88
LARGE_EXTENDED_IRQ = 0x89
LARGE_QWORD_ADDRESS = 0x8A

# §6.4.3.5.5 Resource Type of an address space descriptor
RESOURCE_TYPE_MEMORY = 0
RESOURCE_TYPE_IO = 1
RESOURCE_TYPE_BUS = 2
# §6.4.3.5.5 General Flags
GENERAL_CONSUMER = 1 << 0          # 0 = ResourceProducer (a bridge window)
GENERAL_SUBTRACTIVE = 1 << 1
GENERAL_MIN_FIXED = 1 << 2
GENERAL_MAX_FIXED = 1 << 3
# §6.4.3.5.5 Type Specific Flags, I/O: _RNG = EntireRange
IO_RANGE_ENTIRE = 0x03
# §6.4.3.5.5 Type Specific Flags, memory: _RW and _MEM
MEM_READ_WRITE = 1 << 0
MEM_NON_CACHEABLE = 0 << 1
MEM_CACHEABLE = 1 << 1
MEM_PREFETCHABLE = 3 << 1
# §6.4.3.6 Extended Interrupt Descriptor flags
IRQ_CONSUMER = 1 << 0
IRQ_EDGE = 1 << 1
IRQ_ACTIVE_LOW = 1 << 2
IRQ_SHARED = 1 << 3
IRQ_WAKE = 1 << 4
# §6.4.2.5 I/O Port Descriptor Information: decodes 16 address lines
IO_DECODE_16 = 1 << 0
# §6.4.3.4 Memory32Fixed Information
MEMORY32_READ_WRITE = 1 << 0

_WINDOW_FLAGS = GENERAL_MIN_FIXED | GENERAL_MAX_FIXED   # producer, positive decode


def _large(tag: int, body: bytes) -> bytes:
    return struct.pack("<BH", tag, len(body)) + body


def _check_range(minimum: int, maximum: int, limit: int) -> None:
    if not 0 <= minimum <= maximum < limit:
        raise ValueError(f"bad resource range {minimum:#x}..{maximum:#x}")


def io_port(base: int, length: int, alignment: int = 1) -> bytes:
    """IO (Decode16, base, base, alignment, length): §6.4.2.5, a fixed
    range (minimum == maximum) of 16-bit-decoded ports."""
    _check_range(base, base + length - 1, 1 << 16)
    return struct.pack("<BBHHBB", SMALL_IO, IO_DECODE_16, base, base, alignment, length)


def irq_no_flags(irqs: Sequence[int]) -> bytes:
    """IRQNoFlags () {irqs}: §6.4.2.1, ISA IRQs 0-15, edge, active high."""
    if not irqs or any(not 0 <= irq < 16 for irq in irqs):
        raise ValueError(f"IRQNoFlags takes ISA IRQs 0-15, not {irqs}")
    mask = sum(1 << irq for irq in set(irqs))
    return struct.pack("<BH", SMALL_IRQ_NO_FLAGS, mask)


def memory32_fixed(base: int, length: int, writeable: bool = True) -> bytes:
    """Memory32Fixed (ReadWrite, base, length): §6.4.3.4."""
    _check_range(base, base + length - 1, 1 << 32)
    body = struct.pack("<BII", MEMORY32_READ_WRITE if writeable else 0, base, length)
    return _large(LARGE_MEMORY32_FIXED, body)


def _address(tag: int, width: str, rtype: int, type_flags: int,
             minimum: int, maximum: int) -> bytes:
    """An address space descriptor (§6.4.3.5.1-3) for a bridge window:
    ResourceProducer, PosDecode, MinFixed, MaxFixed, granularity and
    translation 0, length maximum - minimum + 1."""
    _check_range(minimum, maximum, 1 << (8 * struct.calcsize(width)))
    values = (0, minimum, maximum, 0, maximum - minimum + 1)
    body = struct.pack(f"<BBB5{width}", rtype, _WINDOW_FLAGS, type_flags, *values)
    return _large(tag, body)


def word_bus_number(minimum: int, maximum: int) -> bytes:
    """WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, ...)."""
    return _address(LARGE_WORD_ADDRESS, "H", RESOURCE_TYPE_BUS, 0, minimum, maximum)


def word_io(minimum: int, maximum: int) -> bytes:
    """WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...)."""
    return _address(LARGE_WORD_ADDRESS, "H", RESOURCE_TYPE_IO, IO_RANGE_ENTIRE, minimum, maximum)


def dword_io(minimum: int, maximum: int) -> bytes:
    """DWordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...)."""
    return _address(LARGE_DWORD_ADDRESS, "I", RESOURCE_TYPE_IO, IO_RANGE_ENTIRE, minimum, maximum)


def dword_memory(minimum: int, maximum: int, caching: int = MEM_NON_CACHEABLE) -> bytes:
    """DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, caching, ReadWrite, ...)."""
    flags = MEM_READ_WRITE | caching
    return _address(LARGE_DWORD_ADDRESS, "I", RESOURCE_TYPE_MEMORY, flags, minimum, maximum)


def qword_memory(minimum: int, maximum: int, caching: int = MEM_NON_CACHEABLE) -> bytes:
    """QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, caching, ReadWrite, ...)."""
    flags = MEM_READ_WRITE | caching
    return _address(LARGE_QWORD_ADDRESS, "Q", RESOURCE_TYPE_MEMORY, flags, minimum, maximum)


def extended_interrupt(gsis: Sequence[int], edge: bool, active_low: bool,
                       shared: bool = False) -> bytes:
    """Interrupt (ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow,
    Exclusive|Shared) {gsis}: §6.4.3.6, no ResourceSource."""
    if not 0 < len(gsis) < 256 or any(not 0 <= g < 1 << 32 for g in gsis):
        raise ValueError(f"bad interrupt list {gsis}")
    flags = (IRQ_CONSUMER | (IRQ_EDGE if edge else 0)
             | (IRQ_ACTIVE_LOW if active_low else 0) | (IRQ_SHARED if shared else 0))
    body = struct.pack(f"<BB{len(gsis)}I", flags, len(gsis), *gsis)
    return _large(LARGE_EXTENDED_IRQ, body)


def end_tag(descriptors: bytes) -> bytes:
    """End Tag (§6.4.2.9) whose checksum makes ``descriptors`` plus the
    tag sum to zero (a zero checksum would also be accepted)."""
    head = bytes([SMALL_END_TAG])
    return head + bytes([checksum(descriptors + head)])


def resource_template(descriptors: Sequence[bytes]) -> bytes:
    """ResourceTemplate () {descriptors}: an AML Buffer ending in an End Tag."""
    body = b"".join(descriptors)
    return aml.buffer(body + end_tag(body))
