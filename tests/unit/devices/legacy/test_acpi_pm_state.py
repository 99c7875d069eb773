"""Snapshot and restore of the ACPI PM registers: PM1 status/enable/control,
the PM timer counting on from its saved value, and the SCI level."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvmlite.base.state import StateError
from kvmlite.devices.legacy import acpi_pm as pm

from .test_acpi_pm import CNT, EN, STS, TMR, Rig


def round_trip(rig: Rig, ns: int = 0, **kwargs: Any) -> Rig:
    state = json.loads(json.dumps(rig.pm.save_state()))
    fresh = Rig(**kwargs)
    fresh.ns = ns
    fresh.pm.restore_state(state)
    return fresh


def test_acpi_pm_restore_keeps_pm1_registers_and_raises_sci() -> None:
    rig = Rig()
    rig.io.outw(EN, pm.STS_PWRBTN | pm.STS_RTC)
    rig.pm.press_power_button()
    rig.io.outw(CNT, 3 << pm.CNT_SLP_TYP_SHIFT | pm.CNT_BM_RLD)
    fresh = round_trip(rig)

    assert fresh.io.inw(STS) == pm.STS_PWRBTN
    assert fresh.io.inw(EN) == pm.STS_PWRBTN | pm.STS_RTC
    assert fresh.io.inw(CNT) == rig.io.inw(CNT)
    assert fresh.sci.level is True
    fresh.io.outw(STS, pm.STS_PWRBTN)                  # the guest's handler acks it
    assert fresh.sci.level is False


def test_acpi_pm_restore_drives_a_quiet_sci_low() -> None:
    rig = Rig()
    rig.pm.press_power_button()                         # status set, not enabled
    fresh = round_trip(rig)

    assert fresh.sci.history == [False]
    fresh.io.outw(EN, pm.STS_PWRBTN)
    assert fresh.sci.level is True


def test_acpi_pm_timer_continues_from_saved_value() -> None:
    rig = Rig()
    rig.ns = 123_456_789_012                            # the source host's monotonic clock
    saved = rig.io.inl(TMR)
    fresh = round_trip(rig, ns=5_000)                   # another host, another epoch

    assert fresh.io.inl(TMR) == saved
    fresh.ns += 1_000_000                               # one millisecond later
    assert fresh.io.inl(TMR) == (saved + pm.PM_TIMER_HZ // 1000) & 0xFFFF_FFFF


def test_acpi_pm_timer_wraps_in_24_bit_mode() -> None:
    rig = Rig(timer_bits=24)
    rig.ns = 10**10
    saved = rig.io.inl(TMR)
    fresh = round_trip(rig, timer_bits=24)

    assert fresh.io.inl(TMR) == saved < 1 << 24


def _state() -> dict[str, Any]:
    return json.loads(json.dumps(Rig().pm.save_state()))


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("timer"), "lacks 'timer'"),
    (lambda s: s.update(sts="1"), "sts is str"),
    (lambda s: s.update(sts=1 << 2), "PM1_STS does not have"),
    (lambda s: s.update(en=pm.STS_WAK), "PM1_EN does not have"),
    (lambda s: s.update(cnt=pm.CNT_SLP_EN), "write-only"),
    (lambda s: s.update(timer=1 << 32), "outside"),
    (lambda s: s.update(en=True), "en is bool"),
])
def test_acpi_pm_restore_rejects_bad_state(change: Any, words: str) -> None:
    state = _state()
    change(state)
    fresh = Rig()

    with pytest.raises(StateError, match="^acpi-pm: ") as info:
        fresh.pm.restore_state(state)
    assert words in str(info.value)
    assert fresh.sci.history == []


def test_acpi_pm_restore_rejects_32_bit_count_on_24_bit_timer() -> None:
    state = _state()
    state["timer"] = 1 << 30
    with pytest.raises(StateError, match="timer=1073741824 is outside 0..16777215"):
        Rig(timer_bits=24).pm.restore_state(state)
