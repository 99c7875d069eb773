"""The type 0 header model (PCI Local Bus 3.0 §6.1-§6.7)."""

from __future__ import annotations

import pytest

from kvmlite.devices.pci.config import (BAR0, CAP_ID_MSIX, CAP_ID_VENDOR, CAPABILITY_LIST,
                                        COMMAND, COMMAND_IO, COMMAND_MEMORY, STATUS,
                                        STATUS_CAP_LIST, Bar, BarKind, PciConfigError,
                                        PciConfigSpace, PciIds)

IDS = PciIds(vendor_id=0x1AF4, device_id=0x1042, class_code=0x018000, revision=1,
             subsystem_vendor_id=0x1AF4, subsystem_id=0x1100)


def guest_write_u32(config: PciConfigSpace, reg: int, value: int) -> None:
    config.write(reg, value.to_bytes(4, "little"))


def test_config_new_header_reads_identity_fields() -> None:
    config = PciConfigSpace(IDS)

    assert (config.u16(0x00), config.u16(0x02), config.u8(0x08)) == (0x1AF4, 0x1042, 1)
    assert (config.u8(0x0B), config.u8(0x0A), config.u8(0x09)) == (0x01, 0x80, 0x00)
    assert (config.u16(0x2C), config.u16(0x2E), config.u8(0x0E)) == (0x1AF4, 0x1100, 0)


def test_config_guest_write_to_identity_fields_is_ignored() -> None:
    config = PciConfigSpace(IDS)

    guest_write_u32(config, 0x00, 0xDEADBEEF)
    guest_write_u32(config, 0x08, 0xFFFFFFFF)

    assert config.u32(0x00) == 0x1042_1AF4
    assert config.u32(0x08) == 0x0180_0001


def test_config_command_register_keeps_only_writable_bits() -> None:
    config = PciConfigSpace(IDS)

    config.write(COMMAND, (0xFFFF).to_bytes(2, "little"))

    assert config.command == 0x0407


def test_config_mem32_bar_sizing_with_all_ones_reads_size_mask() -> None:
    config = PciConfigSpace(IDS)
    config.add_bar(Bar(1, 0x1000, BarKind.MEM32))

    guest_write_u32(config, BAR0 + 4, 0xFFFF_FFFF)

    assert config.u32(BAR0 + 4) == 0xFFFF_F000


def test_config_mem64_prefetchable_bar_sizing_reads_both_halves() -> None:
    config = PciConfigSpace(IDS)
    config.add_bar(Bar(2, 0x4000, BarKind.MEM64, prefetchable=True))

    guest_write_u32(config, BAR0 + 8, 0xFFFF_FFFF)
    guest_write_u32(config, BAR0 + 12, 0xFFFF_FFFF)

    assert config.u32(BAR0 + 8) == 0xFFFF_C00C
    assert config.u32(BAR0 + 12) == 0xFFFF_FFFF


def test_config_io_bar_sizing_keeps_io_flag() -> None:
    config = PciConfigSpace(IDS)
    config.add_bar(Bar(0, 0x40, BarKind.IO))

    guest_write_u32(config, BAR0, 0xFFFF_FFFF)

    assert config.u32(BAR0) == 0xFFFF_FFC1


def test_config_unimplemented_bar_reads_zero_after_all_ones() -> None:
    config = PciConfigSpace(IDS)

    guest_write_u32(config, BAR0 + 20, 0xFFFF_FFFF)

    assert config.u32(BAR0 + 20) == 0


def test_config_bar_address_combines_64bit_halves() -> None:
    config = PciConfigSpace(IDS)
    config.add_bar(Bar(0, 0x4000, BarKind.MEM64))

    guest_write_u32(config, BAR0, 0xC000_4000)
    guest_write_u32(config, BAR0 + 4, 0x1)

    assert config.bar_address(0) == 0x1_C000_4000


def test_config_decoded_bars_follow_command_decode_bits() -> None:
    config = PciConfigSpace(IDS)
    config.add_bar(Bar(0, 0x1000, BarKind.MEM32))
    config.add_bar(Bar(1, 0x20, BarKind.IO))
    config.set_bar_address(0, 0xC000_0000)
    config.set_bar_address(1, 0x1000)

    before = config.decoded_bars()
    config.write(COMMAND, bytes([COMMAND_MEMORY, 0]))
    memory_only = config.decoded_bars()
    config.write(COMMAND, bytes([COMMAND_MEMORY | COMMAND_IO, 0]))

    assert before == {}
    assert memory_only == {0: 0xC000_0000}
    assert config.decoded_bars() == {0: 0xC000_0000, 1: 0x1000}


def test_config_bar_at_address_zero_is_not_decoded() -> None:
    config = PciConfigSpace(IDS)
    config.add_bar(Bar(0, 0x1000, BarKind.MEM32))

    config.write(COMMAND, bytes([COMMAND_MEMORY, 0]))

    assert config.decoded_bars() == {}


@pytest.mark.parametrize("bar", [Bar(0, 0x1800, BarKind.MEM32), Bar(5, 0x1000, BarKind.MEM64),
                                 Bar(0, 8, BarKind.MEM32), Bar(0, 0x200, BarKind.IO)])
def test_config_add_bar_impossible_shape_raises(bar: Bar) -> None:
    config = PciConfigSpace(IDS)

    with pytest.raises(PciConfigError):
        config.add_bar(bar)


def test_config_add_bar_overlapping_upper_half_raises() -> None:
    config = PciConfigSpace(IDS)
    config.add_bar(Bar(0, 0x1000, BarKind.MEM64))

    with pytest.raises(PciConfigError):
        config.add_bar(Bar(1, 0x1000, BarKind.MEM32))


def test_config_capabilities_form_a_linked_list() -> None:
    config = PciConfigSpace(IDS)

    first = config.add_capability(CAP_ID_MSIX, bytes(10))
    second = config.add_capability(CAP_ID_VENDOR, bytes([16]) + bytes(13))

    assert config.u16(STATUS) & STATUS_CAP_LIST
    assert config.u8(CAPABILITY_LIST) == first == 0x40
    assert (config.u8(first), config.u8(first + 1)) == (CAP_ID_MSIX, second)
    assert second % 4 == 0 and second >= first + 12
    assert (config.u8(second), config.u8(second + 1)) == (CAP_ID_VENDOR, 0)


def test_config_capability_writable_mask_limits_guest_writes() -> None:
    config = PciConfigSpace(IDS)
    cap = config.add_capability(CAP_ID_VENDOR, bytes(6), writable=bytes([0, 0xF0]))

    config.write(cap, b"\xff" * 8)

    assert config.read(cap, 8) == bytes([CAP_ID_VENDOR, 0, 0, 0xF0, 0, 0, 0, 0])


def test_config_capability_past_end_raises() -> None:
    config = PciConfigSpace(IDS)

    with pytest.raises(PciConfigError):
        config.add_capability(CAP_ID_VENDOR, bytes(250))


def test_config_guest_write_past_end_is_truncated() -> None:
    config = PciConfigSpace(IDS)

    config.write(0xFE, b"\xff" * 4)

    assert len(config.read(0, 256)) == 256
