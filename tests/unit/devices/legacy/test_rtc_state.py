"""Snapshot and restore of the MC146818 RTC: CMOS, index, frozen fields and
the guest's offset from host time, compared by what the guest reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvmlite.base.state import StateError
from kvmlite.devices.legacy import rtc as mc

from .test_rtc import DATA, INDEX, T0, Rig


def round_trip(rig: Rig, now: float) -> Rig:
    state = json.loads(json.dumps(rig.rtc.save_state()))
    fresh = Rig(now=now)
    fresh.rtc.restore_state(state)
    return fresh


def test_rtc_restore_keeps_cmos_and_register_b() -> None:
    rig = Rig()
    rig.set_cmos(0x40, 0xA5)                            # firmware's scratch byte
    rig.set_cmos(mc.REG_SECONDS_ALARM, 0x15)
    rig.set_cmos(mc.REG_A, 0x2A)                         # another periodic rate
    rig.set_cmos(mc.REG_B, mc.B_24H | mc.B_DM_BINARY)
    fresh = round_trip(rig, T0)

    assert fresh.cmos(0x40) == 0xA5
    assert fresh.cmos(mc.REG_SECONDS_ALARM) == 0x15
    assert fresh.cmos(mc.REG_A) & ~mc.A_UIP == 0x2A
    assert fresh.clock() == (20, 24, 3, 5, 13, 45, 30)   # binary, as B says


def test_rtc_restore_keeps_guest_offset_against_host_time() -> None:
    rig = Rig()
    rig.set_clock(0x30, 0x01, 0x02, 0x03, 0x04, 0x05)   # 2030-01-02 03:04:05
    fresh = round_trip(rig, T0 + 60)                     # restored a minute later

    assert fresh.clock() == (0x20, 0x30, 0x01, 0x02, 0x03, 0x05, 0x05)
    assert fresh.rtc.guest_time() == rig.rtc.guest_time() + 60


def test_rtc_restore_keeps_index_register() -> None:
    rig = Rig()
    rig.io.outb(INDEX, 0x80 | mc.REG_MONTH)              # NMI mask bit, month
    fresh = round_trip(rig, T0)

    assert fresh.io.inb(DATA) == 0x03


def test_rtc_restore_mid_set_keeps_frozen_fields() -> None:
    rig = Rig()
    rig.set_cmos(mc.REG_B, mc.B_24H | mc.B_SET)
    rig.set_cmos(mc.REG_HOURS, 0x22)
    fresh = round_trip(rig, T0 + 3600)

    assert fresh.cmos(mc.REG_HOURS) == 0x22               # still frozen, as written
    assert fresh.cmos(mc.REG_SECONDS) == 0x30
    fresh.set_cmos(mc.REG_B, mc.B_24H)                    # SET off: the clock takes it
    assert fresh.clock()[4:] == (0x22, 0x45, 0x30)


def _state() -> dict[str, Any]:
    rig = Rig()
    rig.set_cmos(mc.REG_B, mc.B_24H | mc.B_SET)
    return json.loads(json.dumps(rig.rtc.save_state()))


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("cmos"), "lacks 'cmos'"),
    (lambda s: s.pop("frozen"), "lacks 'frozen'"),
    (lambda s: s.update(cmos=mc.pack_bytes(bytes(10))), "10 bytes, expected 128"),
    (lambda s: s.update(index=0x80), "index=128 is outside"),
    (lambda s: s.update(offset=1.5), "offset is float"),
    (lambda s: s.update(frozen=None), "SET but frozen is null"),
    (lambda s: s.update(frozen=[0] * 7), "7 entries"),
    (lambda s: s.update(frozen=[0] * 7 + [256]), "frozen[7]=256"),
])
def test_rtc_restore_rejects_bad_state(change: Any, words: str) -> None:
    state = _state()
    change(state)
    fresh = Rig()

    with pytest.raises(StateError, match="^rtc: ") as info:
        fresh.rtc.restore_state(state)
    assert words in str(info.value)
    assert fresh.cmos(mc.REG_B) == mc.B_DEFAULT           # nothing applied


def test_rtc_restore_rejects_frozen_fields_without_set() -> None:
    state = json.loads(json.dumps(Rig().rtc.save_state()))
    state["frozen"] = [0] * 8
    with pytest.raises(StateError, match="rtc: frozen time fields without SET"):
        Rig().rtc.restore_state(state)
