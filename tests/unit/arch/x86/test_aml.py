"""AML encoder (ACPI 6.3 §20) and resource descriptors (§6.4): known
encodings, then byte-for-byte agreement with what the real iasl compiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmlite.arch.x86.acpi import aml
from kvmlite.arch.x86.acpi import resources as res

from .acpica_tools import compile_asl


def decode_pkg_length(data: bytes) -> tuple[int, int]:
    """An independent PkgLength decoder (§20.2.4): (value, bytes used)."""
    follow = data[0] >> 6
    if follow == 0:
        return data[0] & 0x3F, 1
    value = data[0] & 0x0F
    for i in range(follow):
        value |= data[1 + i] << (4 + 8 * i)
    return value, follow + 1


# --- NameString (§20.2.2) ---

@pytest.mark.parametrize("path, expected", [
    ("_HID", b"_HID"),
    ("PCI", b"PCI_"),
    ("\\_SB", b"\\_SB_"),
    ("\\_SB.PCI0", b"\\\x2e_SB_PCI0"),
    ("_SB.PCI0.COM1", b"\x2f\x03_SB_PCI0COM1"),
    ("^^FOO", b"^^FOO_"),
    ("\\", b"\\\x00"),
])
def test_name_string_paths_encode_per_spec(path: str, expected: bytes) -> None:
    # Act
    encoded = aml.name_string(path)
    # Assert
    assert encoded == expected


@pytest.mark.parametrize("bad", ["1ABC", "ABCDE", "ab", "A-B", "_SB..X"])
def test_name_string_invalid_segment_raises(bad: str) -> None:
    with pytest.raises(ValueError):
        aml.name_string(bad)


# --- PkgLength (§20.2.4) ---

@pytest.mark.parametrize("body_len, size", [
    (0, 1), (62, 1), (63, 2), (0xFFD, 2), (0xFFE, 3), (0xFFFFC, 3), (0xFFFFD, 4),
])
def test_pkg_length_form_boundaries_pick_smallest_size(body_len: int, size: int) -> None:
    # Act
    encoded = aml.pkg_length(body_len)
    # Assert: the encoded value counts the PkgLength bytes themselves
    assert len(encoded) == size
    assert decode_pkg_length(encoded) == (body_len + size, size)


def test_pkg_length_too_large_raises() -> None:
    with pytest.raises(ValueError):
        aml.pkg_length(aml.PKG_LENGTH_MAX)


# --- integers, strings, EISAID (§20.2.3, §19.6.35) ---

@pytest.mark.parametrize("value, expected", [
    (0, b"\x00"), (1, b"\x01"), (2, b"\x0a\x02"), (0xFF, b"\x0a\xff"),
    (0x100, b"\x0b\x00\x01"), (0x10000, b"\x0c\x00\x00\x01\x00"),
    (1 << 32, b"\x0e\x00\x00\x00\x00\x01\x00\x00\x00"),
])
def test_integer_values_use_shortest_prefix(value: int, expected: bytes) -> None:
    assert aml.integer(value) == expected


@pytest.mark.parametrize("bad", [-1, 1 << 64])
def test_integer_out_of_range_raises(bad: int) -> None:
    with pytest.raises(ValueError):
        aml.integer(bad)


def test_string_is_prefixed_and_nul_terminated() -> None:
    assert aml.string("LNRO0005") == b"\x0dLNRO0005\x00"


@pytest.mark.parametrize("eisa, expected", [
    ("PNP0A03", b"\x0c\x41\xd0\x0a\x03"),
    ("PNP0501", b"\x0c\x41\xd0\x05\x01"),
    ("PNP0303", b"\x0c\x41\xd0\x03\x03"),
])
def test_eisa_id_known_ids_encode_compressed(eisa: str, expected: bytes) -> None:
    assert aml.eisa_id(eisa) == expected


@pytest.mark.parametrize("bad", ["pnp0a03", "PNP0A0", "PNP0A0G"])
def test_eisa_id_malformed_raises(bad: str) -> None:
    with pytest.raises(ValueError):
        aml.eisa_id(bad)


def test_package_over_255_elements_raises() -> None:
    with pytest.raises(ValueError):
        aml.package([0] * 256)


def test_method_flags_pack_args_serialize_and_sync_level() -> None:
    # Act
    encoded = aml.method("FOO", 3, [], serialized=True, sync_level=2)
    # Assert: MethodOp, PkgLength, NameString, flags
    assert encoded == b"\x14\x06FOO_" + bytes([3 | 1 << 3 | 2 << 4])


# --- against iasl ---

@pytest.mark.parametrize("asl, ours", [
    ("Name (\\_S5, Package (0x04) { 5, 5, 0, 0 })",
     aml.name("\\_S5", aml.package([5, 5, 0, 0]))),
    ('Scope (\\_SB) { Device (PCI0) { Name (_HID, EisaId ("PNP0A03")) } }',
     aml.scope("\\_SB", [aml.device("PCI0", [aml.name("_HID", aml.eisa_id("PNP0A03"))])])),
    ("Name (INTS, Package () { 0, 1, 0x12, 0x1234, 0x12345678, 0x123456789A })",
     aml.name("INTS", aml.package([0, 1, 0x12, 0x1234, 0x12345678, 0x123456789A]))),
    ('Name (STR0, "LNRO0005")', aml.name("STR0", "LNRO0005")),
    ("Name (BUF0, Buffer () { 1, 2, 3 })", aml.name("BUF0", aml.buffer(b"\x01\x02\x03"))),
    ("Method (_STA, 0, Serialized) { Return (0x0F) }",
     aml.method("_STA", 0, [aml.return_(0x0F)], serialized=True)),
    ("Method (FOO, 2, NotSerialized) { Return (One) }",
     aml.method("FOO", 2, [aml.return_(1)])),
    ("Name (\\_SB.ABCD, Ones)", aml.name("\\_SB.ABCD", aml.ONES)),
    ("Name (BIG, Package () {" + ", ".join(["0x12345678"] * 40) + "})",
     aml.name("BIG", aml.package([0x12345678] * 40))),
    ("Scope (\\_SB) {" + " ".join(f"Name (N{i:03}, 0x{i:04X}0000)" for i in range(450)) + "}",
     aml.scope("\\_SB", [aml.name(f"N{i:03}", i << 16) for i in range(450)])),
], ids=["s5", "device", "ints", "string", "buffer", "serialized-method", "method",
        "ones", "pkglen-2-bytes", "pkglen-3-bytes"])
def test_aml_terms_match_iasl_output(tmp_path: Path, asl: str, ours: bytes) -> None:
    # Act
    theirs = compile_asl(tmp_path, asl)
    # Assert
    assert ours == theirs


@pytest.mark.parametrize("asl, ours", [
    ("WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0xFF, 0, 0x100,,,)",
     res.word_bus_number(0, 0xFF)),
    ("WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, "
     "0, 0x0D00, 0xFFFF, 0, 0xF300,,,, TypeStatic, DenseTranslation)",
     res.word_io(0x0D00, 0xFFFF)),
    ("DWordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, "
     "0, 0x1000, 0xFFFF, 0, 0xF000,,,, TypeStatic, DenseTranslation)",
     res.dword_io(0x1000, 0xFFFF)),
    ("DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, "
     "0, 0xC0000000, 0xCFFFFFFF, 0, 0x10000000,,,, AddressRangeMemory, TypeStatic)",
     res.dword_memory(0xC0000000, 0xCFFFFFFF)),
    ("QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadWrite, "
     "0, 0x1000000000, 0x1FFFFFFFFF, 0, 0x1000000000,,,, AddressRangeMemory, TypeStatic)",
     res.qword_memory(0x1000000000, 0x1FFFFFFFFF, res.MEM_PREFETCHABLE)),
    ("IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08)", res.io_port(0x3F8, 8)),
    ("IRQNoFlags () {4}", res.irq_no_flags([4])),
    ("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) {16}",
     res.extended_interrupt([16], edge=True, active_low=False)),
    ("Interrupt (ResourceConsumer, Level, ActiveLow, Shared, ,, ) {10, 11}",
     res.extended_interrupt([10, 11], edge=False, active_low=True, shared=True)),
    ("Memory32Fixed (ReadWrite, 0xD0000000, 0x00001000)", res.memory32_fixed(0xD0000000, 0x1000)),
], ids=["bus", "wordio", "dwordio", "dwordmem", "qwordmem", "io", "irqnoflags",
        "interrupt-edge", "interrupt-level", "mem32fixed"])
def test_resource_descriptors_match_iasl_output(tmp_path: Path, asl: str, ours: bytes) -> None:
    # Arrange
    template = res.resource_template([ours])
    # Act
    theirs = compile_asl(tmp_path, f"Name (_CRS, ResourceTemplate () {{ {asl} }})")
    # Assert: identical but for the End Tag checksum, which iasl leaves 0
    ours_named = aml.name("_CRS", template)
    assert ours_named[:-1] == theirs[:-1]
    assert theirs[-2:] == b"\x79\x00"


def test_resource_template_end_tag_checksum_sums_to_zero() -> None:
    # Arrange
    descriptors = [res.io_port(0x60, 1), res.io_port(0x64, 1), res.irq_no_flags([1])]
    # Act
    template = res.resource_template(descriptors)
    # Assert: the descriptors start after BufferOp, PkgLength, BufferSize
    body = b"".join(descriptors)
    tail = template[template.index(body):]
    assert tail[-2] == res.SMALL_END_TAG
    assert sum(tail) % 256 == 0 and tail[-1] != 0


@pytest.mark.parametrize("bad", [[], [16]])
def test_irq_no_flags_non_isa_irq_raises(bad: list[int]) -> None:
    with pytest.raises(ValueError):
        res.irq_no_flags(bad)


def test_word_io_range_past_16_bits_raises() -> None:
    with pytest.raises(ValueError):
        res.word_io(0x1000, 0x10000)
