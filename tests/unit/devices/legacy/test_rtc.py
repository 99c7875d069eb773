"""The MC146818 RTC, read and set the way Linux's mc146818-lib does."""

from __future__ import annotations

import calendar
import random

from kvmlite.arch.x86 import layout
from kvmlite.devices.legacy import rtc as mc
from kvmlite.devices.legacy.rtc import Rtc

from .portio import PortIo

INDEX = layout.PORT_RTC
DATA = layout.PORT_RTC + 1
# Tuesday 2024-03-05 13:45:30 UTC
T0 = calendar.timegm((2024, 3, 5, 13, 45, 30, 0, 0, 0))


class Rig:
    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.rtc = Rtc(clock=lambda: self.now)
        self.io = PortIo()
        self.io.bus.register(layout.PORT_RTC, mc.PORT_COUNT, self.rtc, "rtc")

    def cmos(self, index: int) -> int:
        self.io.outb(INDEX, index)
        return self.io.inb(DATA)

    def set_cmos(self, index: int, value: int) -> None:
        self.io.outb(INDEX, index)
        self.io.outb(DATA, value)

    def clock(self) -> tuple[int, ...]:
        regs = (mc.REG_CENTURY, mc.REG_YEAR, mc.REG_MONTH, mc.REG_DAY,
                mc.REG_HOURS, mc.REG_MINUTES, mc.REG_SECONDS)
        return tuple(self.cmos(r) for r in regs)

    def set_clock(self, *values: int) -> None:
        """mc146818_set_time: SET on, write the registers, SET off."""
        b = self.cmos(mc.REG_B)
        self.set_cmos(mc.REG_B, b | mc.B_SET)
        regs = (mc.REG_YEAR, mc.REG_MONTH, mc.REG_DAY, mc.REG_HOURS, mc.REG_MINUTES, mc.REG_SECONDS)
        for reg, value in zip(regs, values):
            self.set_cmos(reg, value)
        self.set_cmos(mc.REG_B, b)


def test_rtc_reads_host_utc_time_in_bcd_24_hour_by_default() -> None:
    rig = Rig()

    assert rig.clock() == (0x20, 0x24, 0x03, 0x05, 0x13, 0x45, 0x30)
    assert rig.cmos(mc.REG_WEEKDAY) == 3          # Tuesday; Sunday is 1


def test_rtc_binary_mode_reads_plain_numbers() -> None:
    rig = Rig()

    rig.set_cmos(mc.REG_B, mc.B_24H | mc.B_DM_BINARY)

    assert rig.clock() == (20, 24, 3, 5, 13, 45, 30)


def test_rtc_12_hour_mode_sets_pm_bit() -> None:
    rig = Rig()

    rig.set_cmos(mc.REG_B, 0)                     # BCD, 12-hour
    afternoon = rig.cmos(mc.REG_HOURS)
    rig.now = calendar.timegm((2024, 3, 5, 0, 5, 0, 0, 0, 0))
    midnight = rig.cmos(mc.REG_HOURS)

    assert afternoon == mc.HOUR_PM | 0x01
    assert midnight == 0x12


def test_rtc_time_follows_host_clock() -> None:
    rig = Rig()

    rig.now += 95

    assert rig.clock()[-2:] == (0x47, 0x05)


def test_rtc_register_d_reports_valid_ram_and_time() -> None:
    rig = Rig()

    assert rig.cmos(mc.REG_D) == mc.D_VRT


def test_rtc_register_a_defaults_and_uip_only_just_before_a_second() -> None:
    rig = Rig(now=T0 + 0.5)
    idle = rig.cmos(mc.REG_A)
    rig.now = T0 + 0.9999

    assert idle == mc.A_DEFAULT
    assert rig.cmos(mc.REG_A) == mc.A_DEFAULT | mc.A_UIP


def test_rtc_register_c_reads_zero_with_no_interrupts() -> None:
    rig = Rig()

    assert rig.cmos(mc.REG_C) == 0


def test_rtc_set_moves_guest_clock_not_host() -> None:
    rig = Rig()

    rig.set_clock(0x30, 0x01, 0x02, 0x03, 0x04, 0x05)
    set_value = rig.clock()
    rig.now += 10

    assert set_value == (0x20, 0x30, 0x01, 0x02, 0x03, 0x04, 0x05)
    assert rig.clock()[-1] == 0x15
    assert rig.now == T0 + 10                     # the host clock is the test's own
    assert rig.rtc.guest_time() == calendar.timegm((2030, 1, 2, 3, 4, 15, 0, 0, 0))


def test_rtc_clock_is_frozen_while_set_is_on() -> None:
    rig = Rig()
    rig.set_cmos(mc.REG_B, mc.B_24H | mc.B_SET)

    rig.now += 30
    frozen = rig.cmos(mc.REG_SECONDS)
    uip = rig.cmos(mc.REG_A) & mc.A_UIP

    assert (frozen, uip) == (0x30, 0)


def test_rtc_set_in_binary_12_hour_mode_is_decoded_that_way() -> None:
    rig = Rig()
    rig.set_cmos(mc.REG_B, mc.B_DM_BINARY)        # binary, 12-hour

    rig.set_clock(25, 12, 31, mc.HOUR_PM | 11, 59, 0)
    rig.set_cmos(mc.REG_B, mc.B_24H)              # read back as BCD 24-hour

    assert rig.clock() == (0x20, 0x25, 0x12, 0x31, 0x23, 0x59, 0x00)


def test_rtc_invalid_time_leaves_clock_unchanged() -> None:
    rig = Rig()

    rig.set_clock(0x24, 0x13, 0x45, 0x99, 0x99, 0xFF)    # month 13, day 45, ...

    assert rig.clock() == (0x20, 0x24, 0x03, 0x05, 0x13, 0x45, 0x30)


def test_rtc_february_30_is_rejected() -> None:
    rig = Rig()

    rig.set_clock(0x23, 0x02, 0x30, 0x00, 0x00, 0x00)

    assert rig.clock()[2:4] == (0x03, 0x05)


def test_rtc_time_write_without_set_takes_effect_at_once() -> None:
    rig = Rig()

    rig.set_cmos(mc.REG_MINUTES, 0x10)

    assert rig.clock()[-3:] == (0x13, 0x10, 0x30)


def test_rtc_century_register_can_be_set() -> None:
    rig = Rig()
    b = rig.cmos(mc.REG_B)
    rig.set_cmos(mc.REG_B, b | mc.B_SET)

    rig.set_cmos(mc.REG_CENTURY, 0x21)
    rig.set_cmos(mc.REG_B, b)

    assert rig.clock()[:2] == (0x21, 0x24)


def test_rtc_cmos_ram_keeps_bytes_and_ignores_nmi_bit_of_index() -> None:
    rig = Rig()

    rig.set_cmos(0x40, 0xAB)
    rig.io.outb(INDEX, 0x80 | 0x40)               # NMI disabled, same byte

    assert rig.io.inb(DATA) == 0xAB


def test_rtc_alarm_registers_are_plain_storage() -> None:
    rig = Rig()

    rig.set_cmos(mc.REG_SECONDS_ALARM, 0x42)

    assert rig.cmos(mc.REG_SECONDS_ALARM) == 0x42
    assert rig.cmos(mc.REG_SECONDS) == 0x30


def test_rtc_index_port_reads_ff() -> None:
    rig = Rig()

    assert rig.io.inb(INDEX) == 0xFF


def test_rtc_status_registers_c_and_d_ignore_writes() -> None:
    rig = Rig()

    rig.set_cmos(mc.REG_C, 0xF0)
    rig.set_cmos(mc.REG_D, 0x00)

    assert (rig.cmos(mc.REG_C), rig.cmos(mc.REG_D)) == (0, mc.D_VRT)


def test_rtc_garbage_from_guest_never_raises() -> None:
    rig = Rig()
    rng = random.Random(7)

    for _ in range(5000):
        port = rng.choice((INDEX, DATA))
        if rng.random() < 0.6:
            rig.io.bus.write(port, rng.randbytes(rng.choice((1, 2))))
        else:
            rig.io.bus.read(port, memoryview(bytearray(1)))
    rig.set_cmos(mc.REG_B, mc.B_24H)

    assert rig.cmos(mc.REG_D) == mc.D_VRT
    assert 0 <= mc.from_bcd(rig.cmos(mc.REG_SECONDS)) <= 59
