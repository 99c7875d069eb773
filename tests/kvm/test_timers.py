"""Timer interrupts delivered to a guest IDT handler.

The timers guest (tests/guests/src/timers) programs PIT counter 0 and the
local APIC timer to fire periodically at ``hz`` and counts each in its own
handler.  PIT ticks are counted separately for IOAPIC pin 2 (where IRQ 0
arrives according to kvmlite's MADT override and MP table) and pin 0 (where
a VMM that forgot the override would deliver it).  The guest prints
"timers: start" at its first PIT tick and "timers: done ..." after
``ticks`` more; the test times the two lines on kvmlite's stdout.
"""

from __future__ import annotations

import pytest

from tests.kvm.conftest import LiveKvmlite, fields

pytestmark = pytest.mark.kvm

EXIT_OK = 42
HZ = 100
TICKS = 100            # one second of PIT ticks


@pytest.fixture(scope="module")
def timers(kvm, guest):
    live = LiveKvmlite("run", "-k", str(guest("timers")), "-p", f"hz={HZ} ticks={TICKS}")
    start = live.wait_for("timers: start")
    run = live.finish()
    assert run.status == EXIT_OK, run
    counts = {k: int(v) for k, v in fields(run.stdout, "timers: done").items()}
    return counts, live.arrival("timers: done") - start, run


def test_pit_interrupts_arrive_on_ioapic_pin_2(timers) -> None:
    counts, _, run = timers
    assert counts["pit_pin2"] >= TICKS, run
    assert counts["pit_pin0"] == 0, run


def test_pit_rate_matches_wall_time(timers) -> None:
    """TICKS ticks at HZ take TICKS/HZ s.  KVM's PIT re-injects late ticks,
    so they can bunch up but not exceed real time by much; bounds are
    generous because guest code is emulated slowly here."""
    _, seconds, run = timers
    expected = TICKS / HZ
    assert 0.5 * expected <= seconds <= 4 * expected + 1, f"{seconds:.2f} s\n{run}"


def test_lapic_timer_interrupts_arrive(timers) -> None:
    counts, _, run = timers
    assert counts["lapic"] > 0, run


def test_lapic_timer_rate_is_close_to_the_pit(timers) -> None:
    """Both timers are programmed for HZ (the LAPIC timer assuming KVM's
    1 GHz APIC bus), so over the same window their counts agree within a
    generous factor."""
    counts, _, run = timers
    pit = counts["pit_pin2"] + counts["pit_pin0"]
    assert pit / 3 <= counts["lapic"] <= pit * 3, run
