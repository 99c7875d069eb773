"""Snapshot and restore of the i8042 and its AT keyboard: command byte,
output buffer, queued bytes, keyboard settings, IRQ levels."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvmlite.base.state import StateError
from kvmlite.devices.legacy import atkbd
from kvmlite.devices.legacy import i8042 as kbc

from .test_i8042 import DATA, STATUS, Rig

# 'a' pressed and released in set 2; the host reads 1E 9E with XLAT on
A_SET2 = bytes([0x1C, 0xF0, 0x1C])


def round_trip(rig: Rig) -> Rig:
    state = json.loads(json.dumps(rig.kbc.save_state()))
    fresh = Rig()
    fresh.kbc.restore_state(state)
    return fresh


def test_i8042_restore_delivers_pending_keys_with_irq1() -> None:
    rig = Rig()
    rig.linux_init()
    rig.kbc.send_scancodes(A_SET2 + A_SET2)
    first = rig.read_byte()                        # 0x1E; the rest waits
    fresh = round_trip(rig)

    assert first == 0x1E
    assert fresh.kbd_irq.level is True
    assert fresh.flush() == rig.flush() == [0x9E, 0x1E, 0x9E]
    assert fresh.kbd_irq.level is False


def test_i8042_restore_keeps_half_translated_release() -> None:
    rig = Rig()
    rig.linux_init()
    rig.kbc.send_scancodes(bytes([0x1C]))
    rig.kbc.keyboard._out.append(0xF0)             # the break prefix arrived alone
    assert rig.read_byte() == 0x1E
    assert rig.flush() == []                       # F0 swallowed by the translator
    fresh = round_trip(rig)

    fresh.kbc.send_scancodes(bytes([0x1C]))
    assert fresh.flush() == [0x9E]                 # a release, not a press


def test_i8042_restore_keeps_command_byte_ram_and_a2() -> None:
    rig = Rig()
    rig.command(0x60, 0x47)
    rig.command(0x65, 0x99)
    rig.io.outb(STATUS, kbc.CMD_KBD_ENABLE)
    fresh = round_trip(rig)

    assert fresh.status() & kbc.STS_A2
    assert fresh.command(0x20, replies=1) == [0x47]
    assert fresh.command(0x25, replies=1) == [0x99]


def test_i8042_restore_keeps_a_command_waiting_for_its_argument() -> None:
    rig = Rig()
    rig.command(0x60, kbc.CTR_AFTER_POST | kbc.CTR_AUXINT)
    rig.io.outb(STATUS, kbc.CMD_WRITE_AUX_BUFFER)  # argument not yet written
    fresh = round_trip(rig)

    fresh.io.outb(DATA, 0x5A)
    assert fresh.aux_irq.level is True
    assert fresh.status() & kbc.STS_AUXB
    assert fresh.read_byte() == 0x5A


def test_i8042_restore_keeps_aux_timeout_byte_and_irq12() -> None:
    rig = Rig()
    rig.command(0x60, kbc.CTR_AFTER_POST | kbc.CTR_AUXINT)
    rig.command(kbc.CMD_WRITE_AUX, 0xF2)
    fresh = round_trip(rig)

    assert (fresh.kbd_irq.level, fresh.aux_irq.level) == (False, True)
    assert fresh.status() & (kbc.STS_AUXB | kbc.STS_TIMEOUT) == kbc.STS_AUXB | kbc.STS_TIMEOUT
    assert fresh.read_byte() == kbc.AUX_NO_DEVICE


def test_i8042_restore_keeps_keyboard_settings() -> None:
    rig = Rig()
    rig.linux_init()
    rig.kbd_command(atkbd.CMD_SCANCODE_SET, 3, replies=2)
    rig.kbd_command(atkbd.CMD_SET_LEDS, 0x05, replies=2)
    rig.kbd_command(atkbd.CMD_SET_TYPEMATIC, replies=1)    # argument still to come
    fresh = round_trip(rig)

    for kbd in (rig, fresh):                       # both answer alike, through translation
        assert kbd.kbd_command(0x20, replies=1) == [atkbd.REPLY_ACK]
        assert kbd.kbc.keyboard.typematic == 0x20 and kbd.kbc.keyboard.leds == 0x05
    asked = [r.kbd_command(atkbd.CMD_SCANCODE_SET, 0, replies=3) for r in (rig, fresh)]
    assert asked[0] == asked[1] and fresh.kbc.keyboard.scancode_set == 3
    assert fresh.kbd_command(atkbd.CMD_RESEND, replies=1) == asked[1][2:]   # the last byte sent


def test_i8042_restore_drives_idle_lines_low() -> None:
    fresh = round_trip(Rig())
    assert (fresh.kbd_irq.history, fresh.aux_irq.history) == ([False], [False])


def test_i8042_restore_keeps_empty_buffer_last_read() -> None:
    rig = Rig()
    rig.command(kbc.CMD_SELF_TEST, replies=1)
    fresh = round_trip(rig)
    assert fresh.io.inb(DATA) == kbc.SELF_TEST_OK


def _state() -> dict[str, Any]:
    rig = Rig()
    rig.io.outb(STATUS, kbc.CMD_SELF_TEST)
    return json.loads(json.dumps(rig.kbc.save_state()))


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("ram"), "i8042: saved state lacks 'ram'"),
    (lambda s: s.update(ram=kbc.pack_bytes(bytes(31))), "31 bytes, expected 32"),
    (lambda s: s.update(output_port=0x01), "A20 off"),
    (lambda s: s.update(awaiting=0xAA), "i8042: awaiting=0xaa"),
    (lambda s: s.update(out=[0x55, 1, False]), "is not [byte, aux, timeout]"),
    (lambda s: s.update(out=[0x155, False, False]), "is not [byte, aux, timeout]"),
    (lambda s: s.update(replies={}), "replies is dict"),
    (lambda s: s.update(replies=[[1, False]]), "replies[0]"),
    (lambda s: s.update(a2=None), "a2 is NoneType"),
    (lambda s: s["keyboard"].update(scancode_set=4), "i8042 keyboard: scancode_set=4"),
    (lambda s: s["keyboard"].update(awaiting=atkbd.CMD_ECHO), "i8042 keyboard: awaiting=0xee"),
    (lambda s: s["keyboard"].pop("leds"), "i8042 keyboard: saved state lacks 'leds'"),
    (lambda s: s.update(keyboard=[]), "i8042 keyboard: saved state is list"),
])
def test_i8042_restore_rejects_bad_state(change: Any, words: str) -> None:
    state = _state()
    change(state)
    fresh = Rig()

    with pytest.raises(StateError, match="^i8042") as info:
        fresh.kbc.restore_state(state)
    assert words in str(info.value)
    assert fresh.kbd_irq.history == [] and not fresh.status() & kbc.STS_OBF   # nothing applied
    assert fresh.kbc.keyboard.scancode_set == 2


def test_atkbd_state_round_trips_alone() -> None:
    kbd = atkbd.AtKeyboard()
    kbd.receive(atkbd.CMD_SET_LEDS)
    kbd.type(b"\x1c")
    fresh = atkbd.AtKeyboard()
    fresh.restore_state(json.loads(json.dumps(kbd.save_state())))

    assert [fresh.pop(), fresh.pop()] == [atkbd.REPLY_ACK, 0x1C]
    fresh.receive(0x02)
    assert fresh.leds == 0x02
