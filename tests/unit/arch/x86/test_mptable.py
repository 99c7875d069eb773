"""Intel MP spec 1.4 tables, parsed back with an independent reader."""

from __future__ import annotations

import struct
from collections import Counter

import pytest

from kvmlite.arch.x86 import layout
from kvmlite.arch.x86.acpi import AcpiConfig, build_acpi_tables
from kvmlite.arch.x86.mptable import MpTableConfig, build_mptable, mptable_size
from kvmlite.errors import ConfigError

ENTRY_SIZES = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}


def parse(address: int, blob: bytes) -> tuple[tuple[int, ...], tuple[int, ...], list[tuple[int, bytes]]]:
    """(floating pointer fields, header fields, [(type, entry)]) of an MP table blob."""
    floating = struct.unpack_from("<4sIBBB5B", blob, 0)
    table = blob[floating[1] - address:]
    header = struct.unpack_from("<4sHBB8s12sIHHIHBx", table, 0)
    entries, offset = [], 44
    for _ in range(header[8]):
        etype = table[offset]
        entries.append((etype, table[offset:offset + ENTRY_SIZES[etype]]))
        offset += ENTRY_SIZES[etype]
    assert offset == header[1]
    return floating, header, entries


def of_type(entries: list[tuple[int, bytes]], etype: int) -> list[bytes]:
    return [e for t, e in entries if t == etype]


def io_interrupts(entries: list[tuple[int, bytes]]) -> list[tuple[int, ...]]:
    """(type, flags, bus, bus irq, apic id, pin) of each I/O interrupt entry."""
    return [struct.unpack("<BBHBBBB", e)[1:] for e in of_type(entries, 3)]


@pytest.fixture
def table() -> tuple[int, bytes]:
    return build_mptable(MpTableConfig(num_cpus=4, pci_slots=(1, 3), extra_gsis=(16, 17)))


def test_build_mptable_floating_pointer_at_ebda_with_checksum(table: tuple[int, bytes]) -> None:
    # Arrange
    address, blob = table
    # Act
    floating, _, _ = parse(address, blob)
    # Assert
    sig, physptr, length, rev = floating[:4]
    assert address == layout.MPTABLE_ADDR
    assert (sig, physptr, length, rev) == (b"_MP_", address + 16, 1, 4)
    assert sum(blob[:16]) % 256 == 0
    assert floating[5:] == (0, 0, 0, 0, 0)           # table present, virtual wire mode


def test_build_mptable_config_table_checksum_length_and_count(table: tuple[int, bytes]) -> None:
    # Arrange
    address, blob = table
    # Act
    _, header, entries = parse(address, blob)
    # Assert
    sig, length, rev = header[:3]
    assert (sig, rev, header[9]) == (b"PCMP", 4, layout.LAPIC_ADDR)
    assert sum(blob[16:16 + length]) % 256 == 0
    assert 16 + length == len(blob) == mptable_size(MpTableConfig(4, (1, 3), (16, 17)))
    assert Counter(t for t, _ in entries) == {0: 4, 1: 2, 2: 1, 3: 11 + 8 + 2, 4: 2}


def test_build_mptable_entries_sorted_by_type(table: tuple[int, bytes]) -> None:
    _, _, entries = parse(*table)
    types = [t for t, _ in entries]
    assert types == sorted(types)


def test_build_mptable_processors_enabled_bsp_is_cpu0(table: tuple[int, bytes]) -> None:
    # Act
    cpus = [struct.unpack("<BBBBII8x", e) for e in of_type(parse(*table)[2], 0)]
    # Assert: (apic id, flags); EN = 1, BP = 2
    assert [(c[1], c[3]) for c in cpus] == [(0, 3), (1, 1), (2, 1), (3, 1)]
    assert all(c[5] & (1 << 9) for c in cpus)                # APIC feature flag


def test_build_mptable_buses_pci_and_isa(table: tuple[int, bytes]) -> None:
    buses = {e[2:8]: e[1] for e in of_type(parse(*table)[2], 1)}
    assert buses == {b"PCI   ": 0, b"ISA   ": 1}


def test_build_mptable_ioapic_id_matches_madt(table: tuple[int, bytes]) -> None:
    # Arrange
    madt = dict((blob[:4], blob) for _, blob in build_acpi_tables(AcpiConfig(num_cpus=4)).blobs)[b"APIC"]
    madt_ioapic_id = madt[44 + 4 * 8 + 2]                     # after 4 local APIC entries
    # Act
    (ioapic,) = [struct.unpack("<BBBBI", e) for e in of_type(parse(*table)[2], 2)]
    # Assert
    assert ioapic == (2, 4, 0x11, 1, layout.IOAPIC_ADDR)
    assert ioapic[1] == madt_ioapic_id


def test_build_mptable_isa_irqs_irq0_on_pin2_cascade_and_pci_lines_skipped(table: tuple[int, bytes]) -> None:
    # Act
    isa = {irq: (flags, pin) for _, flags, bus, irq, _, pin in io_interrupts(parse(*table)[2])
           if bus == 1 and irq < 16}
    # Assert
    assert isa[0] == (0, 2)
    assert set(isa) == set(range(16)) - {2} - set(layout.IRQ_PCI_INTX)
    assert all(pin == irq for irq, (_, pin) in isa.items() if irq != 0)


def test_build_mptable_pci_intx_level_low_with_prt_swizzle(table: tuple[int, bytes]) -> None:
    # Act
    pci = {(irq >> 2, irq & 3): (flags, pin) for _, flags, bus, irq, _, pin in io_interrupts(parse(*table)[2])
           if bus == 0}
    # Assert: slot 1 INTA -> IRQ_PCI_INTX[1], slot 3 INTB -> IRQ_PCI_INTX[0], like the _PRT
    assert set(pci) == {(s, p) for s in (1, 3) for p in range(4)}
    assert pci[(1, 0)] == (0x0F, layout.IRQ_PCI_INTX[1])
    assert pci[(3, 1)] == (0x0F, layout.IRQ_PCI_INTX[0])
    assert all(flags == 0x0F for flags, _ in pci.values())


def test_build_mptable_extra_gsis_edge_high_identity(table: tuple[int, bytes]) -> None:
    extra = [(flags, irq, pin) for _, flags, bus, irq, _, pin in io_interrupts(parse(*table)[2]) if irq >= 16]
    assert extra == [(0b0101, 16, 16), (0b0101, 17, 17)]


def test_build_mptable_local_interrupts_extint_lint0_nmi_lint1(table: tuple[int, bytes]) -> None:
    local = [struct.unpack("<BBHBBBB", e)[1:] for e in of_type(parse(*table)[2], 4)]
    assert [(itype, dest, lint) for itype, _, _, _, dest, lint in local] == [(3, 0xFF, 0), (1, 0xFF, 1)]


def test_build_mptable_41_cpus_fit_in_ebda_kib() -> None:
    # Act
    address, blob = build_mptable(MpTableConfig(num_cpus=41))
    # Assert
    assert address + len(blob) <= layout.VGA_HOLE_START
    assert len(of_type(parse(address, blob)[2], 0)) == 41


def test_build_mptable_exactly_one_kib_fits() -> None:
    # Arrange: 188 fixed + 41 * 20 + 2 * 8 = 1024
    config = MpTableConfig(num_cpus=41, extra_gsis=(16, 17))
    # Act
    address, blob = build_mptable(config)
    # Assert
    assert len(blob) == 1024 and address + len(blob) == layout.VGA_HOLE_START


@pytest.mark.parametrize("config", [
    MpTableConfig(num_cpus=42),
    MpTableConfig(num_cpus=32, pci_slots=tuple(range(1, 8))),
    MpTableConfig(num_cpus=41, extra_gsis=(16, 17, 18)),
], ids=["42-cpus", "32-cpus-7-slots", "41-cpus-3-gsis"])
def test_build_mptable_too_big_for_ebda_raises(config: MpTableConfig) -> None:
    with pytest.raises(ConfigError, match="EBDA"):
        build_mptable(config)


@pytest.mark.parametrize("kwargs", [
    {"num_cpus": 0}, {"num_cpus": 1, "pci_slots": (0,)}, {"num_cpus": 1, "pci_slots": (32,)},
    {"num_cpus": 1, "extra_gsis": (15,)}, {"num_cpus": 1, "extra_gsis": (24,)},
], ids=["no-cpu", "slot-0", "slot-32", "gsi-15", "gsi-24"])
def test_mptable_config_invalid_raises(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        MpTableConfig(**kwargs)  # type: ignore[arg-type]
