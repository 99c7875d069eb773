"""The root complex: enumeration, BAR placement and (re)mapping, INTx."""

from __future__ import annotations

import logging
from typing import cast

import pytest

from kvmlite.arch.x86 import layout
from kvmlite.devices.bus import Bus, BusDevice
from kvmlite.devices.irq import RecordingIrqLine
from kvmlite.devices.pci.config import Bar, BarKind
from kvmlite.devices.pci.ecam import PciEcam
from kvmlite.devices.pci.function import PciFunction
from kvmlite.devices.pci.root import PciRoot, PciWindows
from kvmlite.errors import ConfigError
from tests.unit.devices.pci.pciguest import COMMAND_IO, COMMAND_MEMORY, PciGuest
from tests.unit.devices.pci.sample import SAMPLE_IDS, SampleFunction


def test_root_new_has_only_host_bridge(root: PciRoot, guest: PciGuest) -> None:
    assert guest.enumerate() == [0]


def test_root_add_fills_first_free_slot_from_one(root: PciRoot, guest: PciGuest) -> None:
    first = root.add(SampleFunction("a"))
    second = root.add(SampleFunction("b"))

    assert (first, second) == (1, 2)
    assert guest.enumerate() == [0, 1, 2]
    assert guest.cfg_read(1, 0x00, 4) == 0x5678_1234


def test_root_add_taken_slot_raises(root: PciRoot) -> None:
    root.add(SampleFunction(), slot=4)

    with pytest.raises(ConfigError):
        root.add(SampleFunction(), slot=4)


def test_root_add_past_last_slot_raises(root: PciRoot) -> None:
    for _ in range(31):
        root.add(PciFunction(SAMPLE_IDS, "plain"))

    with pytest.raises(ConfigError, match="slots"):
        root.add(PciFunction(SAMPLE_IDS, "plain"))


def test_root_sizing_finds_every_bar_kind(root: PciRoot, guest: PciGuest) -> None:
    slot = root.add(SampleFunction())

    bars = guest.size_bars(slot)

    assert [(b.index, b.size, b.is64, b.is_io) for b in bars] == [
        (0, 0x4000, True, False), (2, 0x1000, False, False), (3, 0x20, False, True)]


def test_root_places_bars_aligned_inside_windows(root: PciRoot, guest: PciGuest) -> None:
    slot = root.add(SampleFunction())

    mem64, mem32, io = (guest.bar_address(slot, i) for i in (0, 2, 3))

    assert layout.PCI_MMIO_START <= mem64 < layout.PCI_MMIO_END and mem64 % 0x4000 == 0
    assert layout.PCI_MMIO_START <= mem32 < layout.PCI_MMIO_END and mem32 % 0x1000 == 0
    assert layout.PORT_PCI_IO_START <= io < layout.PORT_PCI_IO_END and io % 0x20 == 0


def test_root_mmio64_window_takes_64bit_bars(buses: tuple[Bus, Bus],
                                             intx: list[RecordingIrqLine]) -> None:
    mmio, pio = buses
    root = PciRoot(mmio, pio, intx, windows=PciWindows(mmio64=(1 << 36, 1 << 37)))
    guest = PciGuest(pio, mmio)

    slot = root.add(SampleFunction())

    assert guest.bar_address(slot, 0) == 1 << 36
    assert guest.bar_address(slot, 2) < 1 << 32


def test_root_window_exhausted_raises(buses: tuple[Bus, Bus], intx: list[RecordingIrqLine]) -> None:
    mmio, pio = buses
    root = PciRoot(mmio, pio, intx, windows=PciWindows(mmio32=(0xC000_0000, 0xC000_4000)))

    with pytest.raises(ConfigError, match="no room"):
        root.add(SampleFunction())


def test_root_bars_not_on_bus_until_decode_enabled(root: PciRoot, guest: PciGuest,
                                                   buses: tuple[Bus, Bus]) -> None:
    mmio, pio = buses
    slot = root.add(SampleFunction())
    mem64, io = guest.bar_address(slot, 0), guest.bar_address(slot, 3)

    before = mmio.find(mem64), pio.find(io)
    guest.enable(slot, COMMAND_MEMORY | COMMAND_IO)

    assert before == (None, None)
    assert mmio.find(mem64) is not None and pio.find(io) is not None
    assert guest.mem_read(mem64 + 5, 1) == 0x05
    assert guest.port_in(io + 1, 1) == 3 * 16 + 1


def test_root_decode_disable_removes_bars_and_tells_function(root: PciRoot, guest: PciGuest,
                                                             buses: tuple[Bus, Bus]) -> None:
    mmio, _ = buses
    function = SampleFunction()
    slot = root.add(function)
    guest.enable(slot, COMMAND_MEMORY)
    mem64 = guest.bar_address(slot, 0)

    guest.disable(slot, COMMAND_MEMORY)

    assert mmio.find(mem64) is None
    assert guest.mem_read(mem64, 4) == 0xFFFF_FFFF
    assert function.moves[-2:] == [(0, None), (2, None)]


def test_root_bar_reprogrammed_while_decoding_moves_range(root: PciRoot, guest: PciGuest,
                                                          buses: tuple[Bus, Bus]) -> None:
    mmio, _ = buses
    function = SampleFunction()
    slot = root.add(function)
    guest.enable(slot)
    old = guest.bar_address(slot, 0)
    new = 0xC800_0000

    guest.set_bar(slot, 0, new)
    guest.mem_write(new + 8, 4, 0xAABBCCDD)

    assert mmio.find(old) is None
    assert root.mapped_bars(slot)[0] == new
    assert function.moves[-1] == (0, new)
    assert function.writes[-1] == (0, 8, bytes.fromhex("DDCCBBAA"))


def test_root_64bit_bar_moves_above_4g(root: PciRoot, guest: PciGuest, buses: tuple[Bus, Bus]) -> None:
    mmio, _ = buses
    slot = root.add(SampleFunction())
    guest.enable(slot)

    guest.set_bar(slot, 0, 0x8_0000_0000)

    assert mmio.find(0x8_0000_0000) is not None
    assert guest.mem_read(0x8_0000_0000 + 3, 1) == 3


def test_root_sizing_with_decode_on_restores_mapping(root: PciRoot, guest: PciGuest,
                                                     buses: tuple[Bus, Bus]) -> None:
    mmio, _ = buses
    slot = root.add(SampleFunction())
    guest.enable(slot)
    address = guest.bar_address(slot, 2)

    guest.cfg_write(slot, 0x18, 4, 0xFFFF_FFFF)      # size BAR 2 without disabling decode
    mid = root.mapped_bars(slot).get(2)
    guest.cfg_write(slot, 0x18, 4, address)

    assert mid == 0xFFFF_F000
    assert root.mapped_bars(slot)[2] == address
    assert mmio.find(address) is not None and mmio.find(0xFFFF_F000) is None


def test_root_bar_moved_onto_another_device_is_refused_and_logged(
        root: PciRoot, guest: PciGuest, buses: tuple[Bus, Bus], caplog: pytest.LogCaptureFixture) -> None:
    mmio, _ = buses
    a, b = root.add(SampleFunction("a")), root.add(SampleFunction("b"))
    guest.enable(a)
    guest.enable(b)
    target = guest.bar_address(a, 2)

    with caplog.at_level(logging.WARNING):
        guest.cfg_write(b, 0x18, 4, target)

    owner = mmio.find(target)
    assert 2 not in root.mapped_bars(b)
    assert owner is not None and owner[0].name == "a.bar2"
    assert "b: guest placed BAR 2" in caplog.text


def test_root_refused_bar_maps_once_moved_to_free_space(root: PciRoot, guest: PciGuest) -> None:
    a, b = root.add(SampleFunction("a")), root.add(SampleFunction("b"))
    guest.enable(a)
    guest.enable(b)
    guest.cfg_write(b, 0x18, 4, guest.bar_address(a, 2))

    guest.cfg_write(b, 0x18, 4, 0xCF00_0000)

    assert root.mapped_bars(b)[2] == 0xCF00_0000


def test_root_io_bar_beyond_port_space_is_refused(root: PciRoot, guest: PciGuest) -> None:
    slot = root.add(SampleFunction())
    guest.enable(slot, COMMAND_IO)

    guest.cfg_write(slot, 0x1C, 4, 0x1_0000)

    assert 3 not in root.mapped_bars(slot)


def test_root_intx_pin_and_line_follow_swizzle(root: PciRoot, guest: PciGuest) -> None:
    slots = [root.add(SampleFunction(str(i))) for i in range(4)]

    lines = [guest.cfg_read(s, 0x3C, 1) for s in slots]
    pins = [guest.cfg_read(s, 0x3D, 1) for s in slots]

    assert pins == [1, 1, 1, 1]
    assert lines == [layout.IRQ_PCI_INTX[s % 4] for s in slots] == [11, 14, 15, 10]
    assert guest.cfg_read(0, 0x3D, 1) == 0     # the host bridge has no interrupt


def test_root_intx_shared_wire_is_wired_or(root: PciRoot, intx: list[RecordingIrqLine]) -> None:
    a, b = SampleFunction("a"), SampleFunction("b")
    root.add(a, slot=1)
    root.add(b, slot=5)            # (5 + 0) % 4 == 1: same wire as slot 1

    a.set_intx(True)
    b.set_intx(True)
    a.set_intx(False)
    still_high = intx[1].level
    b.set_intx(False)

    assert still_high is True
    assert intx[1].level is False
    assert intx[1].history == [True, False]


def test_root_intx_disable_bit_masks_line_and_status_shows_pending(
        root: PciRoot, guest: PciGuest, intx: list[RecordingIrqLine]) -> None:
    function = SampleFunction()
    slot = root.add(function, slot=2)
    guest.cfg_write(slot, 0x04, 2, 0x0400)

    function.set_intx(True)
    masked = intx[2].level
    guest.cfg_write(slot, 0x04, 2, 0x0000)

    assert masked is False
    assert guest.cfg_read(slot, 0x06, 2) & 0x08
    assert intx[2].level is True


def test_root_interrupt_line_register_is_writable(root: PciRoot, guest: PciGuest) -> None:
    slot = root.add(SampleFunction())

    guest.cfg_write(slot, 0x3C, 1, 0x05)

    assert guest.cfg_read(slot, 0x3C, 1) == 0x05


def test_root_function_lock_is_mmio_bus_lock(root: PciRoot, buses: tuple[Bus, Bus]) -> None:
    mmio, _ = buses
    function = SampleFunction()

    root.add(function)

    assert function.lock is mmio.lock_of(cast(BusDevice, function))


def test_root_wrong_number_of_intx_lines_raises(buses: tuple[Bus, Bus]) -> None:
    mmio, pio = buses

    with pytest.raises(ConfigError):
        PciRoot(mmio, pio, [RecordingIrqLine()])


def test_ecam_reads_the_same_registers_as_type1(root: PciRoot, guest: PciGuest) -> None:
    slot = root.add(SampleFunction())
    ecam = PciEcam(root)
    buf = memoryview(bytearray(4))

    ecam.read(slot << 15 | 0x00, buf)

    assert int.from_bytes(buf, "little") == guest.cfg_read(slot, 0x00, 4)


def test_ecam_extended_space_reads_zero_and_absent_function_all_ones(root: PciRoot) -> None:
    ecam = PciEcam(root)
    present, absent = memoryview(bytearray(4)), memoryview(bytearray(4))

    ecam.read(0x100, present)
    ecam.read(9 << 15 | 0x100, absent)

    assert bytes(present) == bytes(4)
    assert bytes(absent) == b"\xff" * 4


def test_ecam_write_moves_bar(root: PciRoot) -> None:
    slot = root.add(SampleFunction())
    ecam = PciEcam(root)

    ecam.write(slot << 15 | 0x18, (0xCE00_0000).to_bytes(4, "little"))
    ecam.write(slot << 15 | 0x04, (COMMAND_MEMORY).to_bytes(2, "little"))

    assert root.mapped_bars(slot)[2] == 0xCE00_0000


def test_ecam_unaligned_access_reads_all_ones(root: PciRoot) -> None:
    buf = memoryview(bytearray(4))

    PciEcam(root).read(0x2, buf)

    assert bytes(buf) == b"\xff" * 4
