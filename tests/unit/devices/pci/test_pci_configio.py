"""Configuration mechanism #1 at 0xCF8-0xCFF (PCI Local Bus 3.0 §3.2.2.3.2),
driven as Linux's arch/x86/pci/direct.c drives it."""

from __future__ import annotations

from kvmlite.devices.pci.root import PciRoot
from tests.unit.devices.pci.pciguest import CONFIG_ADDRESS, CONFIG_DATA, PciGuest
from tests.unit.devices.pci.sample import SampleFunction


def test_configio_linux_type1_probe_succeeds(root: PciRoot, guest: PciGuest) -> None:
    assert guest.probe_type1()


def test_configio_address_register_reads_back_dword(root: PciRoot, guest: PciGuest) -> None:
    guest.port_out(CONFIG_ADDRESS, 4, 0x8000_1234)

    assert guest.port_in(CONFIG_ADDRESS, 4) == 0x8000_1234


def test_configio_address_register_ignores_byte_and_word_writes(root: PciRoot, guest: PciGuest) -> None:
    guest.port_out(CONFIG_ADDRESS, 4, 0x8000_0000)

    guest.port_out(0xCFB, 1, 0x01)
    guest.port_out(0xCF8, 2, 0x0000)

    assert guest.port_in(CONFIG_ADDRESS, 4) == 0x8000_0000
    assert guest.port_in(0xCF8, 1) == 0xFF    # so Linux's mechanism #2 probe fails


def test_configio_host_bridge_identity_at_slot0(root: PciRoot, guest: PciGuest) -> None:
    assert guest.cfg_read(0, 0x00, 4) == 0x0D57_8086
    assert guest.cfg_read(0, 0x0A, 2) == 0x0600
    assert guest.cfg_read(0, 0x0E, 1) == 0x00


def test_configio_byte_and_word_accesses_use_port_offset(root: PciRoot, guest: PciGuest) -> None:
    assert guest.cfg_read(0, 0x01, 1) == 0x80
    assert guest.cfg_read(0, 0x02, 2) == 0x0D57
    assert guest.cfg_read(0, 0x03, 1) == 0x0D


def test_configio_enable_bit_clear_reads_all_ones(root: PciRoot, guest: PciGuest) -> None:
    guest.port_out(CONFIG_ADDRESS, 4, 0x0000_0000)

    assert guest.port_in(CONFIG_DATA, 4) == 0xFFFF_FFFF


def test_configio_other_bus_function_or_empty_slot_reads_all_ones(root: PciRoot,
                                                                  guest: PciGuest) -> None:
    assert guest.cfg_read(0, 0x00, 4, bus=1) == 0xFFFF_FFFF
    assert guest.cfg_read(0, 0x00, 4, fn=1) == 0xFFFF_FFFF
    assert guest.cfg_read(7, 0x00, 4) == 0xFFFF_FFFF


def test_configio_extended_register_bits_read_all_ones(root: PciRoot, guest: PciGuest) -> None:
    guest.port_out(CONFIG_ADDRESS, 4, 0x8000_0000 | 1 << 24)

    assert guest.port_in(CONFIG_DATA, 4) == 0xFFFF_FFFF


def test_configio_access_crossing_dword_reads_all_ones(root: PciRoot, guest: PciGuest) -> None:
    guest.port_out(CONFIG_ADDRESS, 4, 0x8000_0000)

    assert guest.port_in(0xCFE, 4) == 0xFFFF_FFFF
    assert guest.port_in(0xCFF, 2) == 0xFFFF


def test_configio_write_to_empty_slot_is_dropped(root: PciRoot, guest: PciGuest) -> None:
    guest.cfg_write(9, 0x04, 2, 0x7)

    assert guest.cfg_read(9, 0x04, 2) == 0xFFFF


def test_configio_word_write_at_offset_two_reaches_command(root: PciRoot, guest: PciGuest) -> None:
    slot = root.add(SampleFunction())
    guest.port_out(CONFIG_ADDRESS, 4, guest.address(0, slot, 0, 0x04))

    guest.port_out(CONFIG_DATA, 2, 0x0006)

    assert guest.cfg_read(slot, 0x04, 2) == 0x0006
