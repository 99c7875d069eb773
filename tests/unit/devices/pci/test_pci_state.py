"""Snapshot and restore of PCI configuration space, functions (BARs moved
by the guest, command register, INTx) and the root's CONFIG_ADDRESS latch,
compared by what a guest then reads through 0xCF8 and the BARs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from kvmlite.base.state import StateError, pack_bytes, unpack_bytes
from kvmlite.devices.bus import Bus
from kvmlite.devices.irq import RecordingIrqLine
from kvmlite.devices.pci.config import PciConfigSpace
from kvmlite.devices.pci.root import PciRoot
from tests.unit.devices.pci.pciguest import CONFIG_ADDRESS, CONFIG_DATA, COMMAND_IO, COMMAND_MEMORY, PciGuest
from tests.unit.devices.pci.sample import SAMPLE_IDS, SampleFunction

NEW_MEM32 = 0xC840_0000
NEW_MEM64 = 0x2_0000_0000
NEW_IO = 0x6000


@dataclass
class Machine:
    root: PciRoot
    guest: PciGuest
    function: SampleFunction
    intx: list[RecordingIrqLine]
    mmio: Bus


def machine() -> Machine:
    """A fresh root with the sample function in slot 1, as a VM is built."""
    mmio, pio = Bus("mmio"), Bus("pio")
    intx = [RecordingIrqLine() for _ in range(4)]
    root = PciRoot(mmio, pio, intx)
    function = SampleFunction()
    root.add(function, slot=1)
    return Machine(root, PciGuest(pio, mmio), function, intx, mmio)


def json_copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def moved(m: Machine) -> Machine:
    """The guest moves every BAR, enables decode and writes the IRQ line."""
    m.guest.set_bar(1, 0, NEW_MEM64)
    m.guest.set_bar(1, 2, NEW_MEM32, is64=False)
    m.guest.set_bar(1, 3, NEW_IO, is64=False)
    m.guest.enable(1, COMMAND_MEMORY | COMMAND_IO)
    m.guest.cfg_write(1, 0x3C, 1, 0x0B)
    m.guest.cfg_write(1, 0x0C, 1, 0x10)            # cache line size
    return m


def restored(old: Machine) -> Machine:
    new = machine()
    new.root.restore_functions(json_copy(old.root.save_functions()))
    new.root.restore_state(json_copy(old.root.save_state()))
    return new


def test_pci_restore_moves_bars_where_the_guest_put_them() -> None:
    old = moved(machine())
    first_place = machine().guest.bar_address(1, 2)
    new = restored(old)

    assert [new.guest.bar_address(1, i) for i in (0, 2, 3)] == [NEW_MEM64, NEW_MEM32, NEW_IO]
    assert new.root.mapped_bars(1) == old.root.mapped_bars(1) == {0: NEW_MEM64, 2: NEW_MEM32, 3: NEW_IO}
    assert new.guest.mem_read(NEW_MEM32 + 5, 1) == 2 * 16 + 5      # BAR 2 answers at its new home
    assert new.guest.mem_read(NEW_MEM64 + 3, 1) == 0 * 16 + 3
    assert new.guest.port_in(NEW_IO + 1, 1) == 3 * 16 + 1
    assert new.mmio.find(first_place) is None                       # and nowhere else
    assert set(new.function.moves) == {(0, NEW_MEM64), (2, NEW_MEM32), (3, NEW_IO)}


def test_pci_restore_keeps_command_and_writable_registers() -> None:
    old = moved(machine())
    new = restored(old)

    for reg, size in ((0x04, 2), (0x0C, 1), (0x3C, 1), (0x00, 4), (0x08, 4)):
        assert new.guest.cfg_read(1, reg, size) == old.guest.cfg_read(1, reg, size)
    new.guest.mem_write(NEW_MEM32 + 8, 4, 0x11223344)
    assert new.function.writes == [(2, 8, bytes.fromhex("44332211"))]


def test_pci_restore_with_decode_off_leaves_bars_off_the_bus() -> None:
    old = machine()
    old.guest.set_bar(1, 2, NEW_MEM32, is64=False)               # moved, never enabled
    new = restored(old)

    assert new.guest.bar_address(1, 2) == NEW_MEM32
    assert new.root.mapped_bars(1) == {}
    new.guest.enable(1)
    assert new.guest.mem_read(NEW_MEM32, 1) == 2 * 16


def test_pci_restore_keeps_host_bridge_command() -> None:
    old = machine()
    old.guest.cfg_write(0, 0x04, 2, COMMAND_MEMORY)
    new = restored(old)

    assert new.guest.cfg_read(0, 0x04, 2) == COMMAND_MEMORY
    assert new.guest.probe_type1()


def test_pci_restore_drives_intx_to_saved_level() -> None:
    old = machine()
    old.function.set_intx(True)
    new = restored(old)

    assert new.intx[1].level is True
    assert new.guest.cfg_read(1, 0x06, 2) & 0x08                   # interrupt status
    new.function.set_intx(False)
    assert new.intx[1].level is False


def test_pci_restore_intx_stays_masked_by_disable_bit() -> None:
    old = machine()
    old.guest.cfg_write(1, 0x04, 2, 0x0400)
    old.function.set_intx(True)
    new = restored(old)

    assert new.intx[1].level is False
    new.guest.cfg_write(1, 0x04, 2, 0)
    assert new.intx[1].level is True


def test_pci_root_restore_keeps_config_address_latch() -> None:
    old = moved(machine())
    old.guest.port_out(CONFIG_ADDRESS, 4, PciGuest.address(0, 1, 0, 0x10))
    new = restored(old)

    assert new.guest.port_in(CONFIG_ADDRESS, 4) == PciGuest.address(0, 1, 0, 0x10)
    assert new.guest.port_in(CONFIG_DATA, 4) == old.guest.port_in(CONFIG_DATA, 4)


def test_pci_root_save_state_is_its_latch_only() -> None:
    assert machine().root.save_state() == {"config_address": 0}


def test_pci_function_restores_alone_through_the_root_path() -> None:
    old = moved(machine())
    new = machine()
    new.function.restore_state(json_copy(old.function.save_state()))

    assert new.root.mapped_bars(1) == {0: NEW_MEM64, 2: NEW_MEM32, 3: NEW_IO}


# --- bad state ---

def _function_state() -> dict[str, Any]:
    return json_copy(moved(machine()).function.save_state())


def _with_byte(state: dict[str, Any], reg: int, value: int) -> dict[str, Any]:
    data = bytearray(unpack_bytes(state["config"]["bytes"]))
    data[reg] = value
    state["config"]["bytes"] = pack_bytes(data)
    return state


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("intx"), "pci sample: saved state lacks 'intx'"),
    (lambda s: s.update(intx=1), "pci sample: intx is int"),
    (lambda s: s.pop("config"), "pci sample: saved state lacks 'config'"),
    (lambda s: s["config"].update(bytes="AAAA"), "pci sample config: bytes: 3 bytes, expected 256"),
    (lambda s: _with_byte(s, 0x00, 0x35), "pci sample config: read-only bits of register 0x00"),
    (lambda s: _with_byte(s, 0x18, 0x10), "register 0x18"),         # BAR 2 below its 4 KiB size
    (lambda s: _with_byte(s, 0x1C, 0x00), "register 0x1c"),         # BAR 3 no longer I/O
])
def test_pci_function_restore_rejects_bad_state(change: Any, words: str) -> None:
    state = _function_state()
    change(state)
    new = machine()
    before = new.guest.bar_address(1, 2)

    with pytest.raises(StateError) as info:
        new.function.restore_state(state)
    assert words in str(info.value)
    assert new.guest.bar_address(1, 2) == before and new.root.mapped_bars(1) == {}


def test_pci_restore_functions_rejects_other_slots() -> None:
    saved = json_copy(moved(machine()).root.save_functions())
    saved[1]["slot"] = 2
    new = machine()

    with pytest.raises(StateError, match=r"pci: saved functions are in slots \[0, 2\], "
                                         r"this VM has slots \[0, 1\]"):
        new.root.restore_functions(saved)
    assert new.root.mapped_bars(1) == {}


def test_pci_restore_functions_names_slot_of_bad_state() -> None:
    saved = json_copy(moved(machine()).root.save_functions())
    del saved[1]["state"]["intx"]

    with pytest.raises(StateError, match=r"pci sample: saved state lacks 'intx'"):
        machine().root.restore_functions(saved)
    with pytest.raises(StateError, match=r"pci functions\[0\]: saved state is int"):
        machine().root.restore_functions([0, 1])


@pytest.mark.parametrize("state, words", [
    ({}, "pci root: saved state lacks 'config_address'"),
    ({"config_address": 0x8000_0001}, "pci root: config_address=0x80000001 has bits"),
    ({"config_address": -1}, "outside"),
])
def test_pci_root_restore_rejects_bad_latch(state: dict[str, Any], words: str) -> None:
    m = machine()
    with pytest.raises(StateError, match=words):
        m.root.restore_state(state)
    assert m.root.config_io.address == 0


def test_pci_config_space_round_trips_alone() -> None:
    space = PciConfigSpace(SAMPLE_IDS)
    space.write(0x04, b"\x06\x00")
    fresh = PciConfigSpace(SAMPLE_IDS)
    fresh.restore_state(json_copy(space.save_state()))
    assert fresh.command == 0x06
