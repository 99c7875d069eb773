"""The MC146818 real-time clock and CMOS RAM at ports 0x70/0x71.

Register one range of :data:`PORT_COUNT` ports at ``layout.PORT_RTC``:
offset 0 selects a CMOS index (bit 7 is the NMI mask on a PC; ignored), offset
1 reads or writes the selected byte.  The clock registers show the host's UTC
time plus a guest offset, in BCD or binary and 12- or 24-hour as register B
says.  The guest sets its clock the datasheet way (set B.SET, write the time,
clear B.SET); that moves the offset and never touches the host clock.

Register A's update-in-progress bit is set for the 244 us before each second
starts, as on the chip (MC146818A datasheet, "Update Cycle"), so a guest that
waits for UIP to clear reads a consistent time.  No interrupts: the periodic,
alarm and update-ended flags in register C stay 0 and IRQ 8 is never raised.
The century is kept at CMOS index 0x32 (the IBM PC convention).

Only vCPU threads touch it, under the bus's lock; it has no lock of its own.

Snapshots: :meth:`Rtc.save_state` keeps the CMOS RAM (registers A-D, the
alarm bytes 1/3/5 and the periodic rate in A live there; the chip here
raises no interrupts, so there is no other alarm or periodic state), the
index register, the time fields frozen while B.SET is on, and the guest's
offset from the host's UTC clock, in whole seconds.  The offset, not the
guest time, is what is kept: a restored guest's RTC reads host time plus
the same offset, so it shows the time of the restore, as a battery-backed
clock would after the machine was switched off, rather than resuming from
the moment of the snapshot (the guest's system clock, which Linux reads
from the RTC only at boot and resume, is kvmclock's business).
"""

from __future__ import annotations

import calendar
import logging
import time
from typing import Callable

from kvmlite.base.state import Reader, StateError, pack_bytes
from kvmlite.devices.legacy.ports import fill

log = logging.getLogger(__name__)

PORT_COUNT = 2
CMOS_SIZE = 128
INDEX_MASK = 0x7F          # bit 7 of the index write is the NMI mask

# Clock registers (MC146818A Table 2, "Address Map")
REG_SECONDS = 0x00
REG_SECONDS_ALARM = 0x01
REG_MINUTES = 0x02
REG_MINUTES_ALARM = 0x03
REG_HOURS = 0x04
REG_HOURS_ALARM = 0x05
REG_WEEKDAY = 0x06         # 1 = Sunday
REG_DAY = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
REG_CENTURY = 0x32         # not on the chip: where PC firmware keeps it

A_UIP = 0x80
A_DEFAULT = 0x26           # 32.768 kHz time base, 1024 Hz periodic rate
B_SET = 0x80
B_DM_BINARY = 0x04
B_24H = 0x02
B_WRITABLE = 0xFF
B_DEFAULT = B_24H          # BCD, 24-hour: what Linux's rtc-cmos wants
D_VRT = 0x80               # valid RAM and time: the battery is fine
HOUR_PM = 0x80             # 12-hour mode: bit 7 of the hours byte

UIP_WINDOW = 244e-6        # seconds before each update during which UIP reads 1
MAX_OFFSET = 1 << 40       # seconds: far beyond any year the registers can show

_TIME_REGISTERS = (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY,
                   REG_MONTH, REG_YEAR, REG_CENTURY)


def to_bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


def from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


class Rtc:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """``clock`` returns the host's time in seconds since the epoch (UTC)."""
        self._clock = clock
        self._index = 0
        self._cmos = bytearray(CMOS_SIZE)
        self._cmos[REG_A] = A_DEFAULT
        self._cmos[REG_B] = B_DEFAULT
        self._offset = 0.0                      # guest time - host time, seconds
        self._frozen: dict[int, int] | None = None  # time fields while B.SET is on

    def guest_time(self) -> float:
        """The guest's idea of now, seconds since the epoch (UTC)."""
        return self._clock() + self._offset

    # --- snapshots ---

    def save_state(self) -> dict:
        frozen = None if self._frozen is None else [self._frozen[i] for i in _TIME_REGISTERS]
        return {"cmos": pack_bytes(self._cmos), "index": self._index,
                "offset": int(self._offset), "frozen": frozen}

    def restore_state(self, state: dict, part: str = "rtc") -> None:
        """Load :meth:`save_state`'s dict; the clock then reads host time plus
        the saved offset (see the module doc)."""
        r = Reader(state, part)
        cmos = bytearray(r.bytes("cmos", CMOS_SIZE))
        index = r.int("index", 0, INDEX_MASK)
        offset = r.int("offset", -MAX_OFFSET, MAX_OFFSET)
        frozen = _read_frozen(r, bool(cmos[REG_B] & B_SET))
        if cmos[REG_A] & A_UIP:
            raise StateError(f"{part}: register A has UIP set (it is never stored)")
        self._cmos, self._index, self._offset, self._frozen = cmos, index, float(offset), frozen

    # --- BusDevice ---

    def read(self, offset: int, data: memoryview) -> None:
        fill(data, self._read_cmos(self._index) if offset == 1 else 0xFF)

    def write(self, offset: int, data: bytes) -> None:
        if not data:
            return
        if offset == 0:
            self._index = data[0] & INDEX_MASK
        elif offset == 1:
            self._write_cmos(self._index, data[0])

    # --- registers ---

    def _read_cmos(self, index: int) -> int:
        if index in _TIME_REGISTERS:
            return self._encode(index, self._time_fields()[index])
        if index == REG_A:
            return self._cmos[REG_A] | (A_UIP if self._update_imminent() else 0)
        if index == REG_C:
            value, self._cmos[REG_C] = self._cmos[REG_C], 0   # read clears the flags
            return value
        if index == REG_D:
            return D_VRT
        return self._cmos[index]

    def _write_cmos(self, index: int, value: int) -> None:
        if index in _TIME_REGISTERS:
            self._write_time(index, value)
        elif index == REG_A:
            self._cmos[REG_A] = value & ~A_UIP
        elif index == REG_B:
            self._write_b(value)
        elif index in (REG_C, REG_D):
            pass                                # read-only
        else:
            self._cmos[index] = value

    def _write_b(self, value: int) -> None:
        was_set = self._cmos[REG_B] & B_SET
        self._cmos[REG_B] = value & B_WRITABLE
        if value & B_SET and not was_set:
            self._frozen = self._time_fields()  # updates stop; the guest edits a copy
        elif was_set and not value & B_SET:
            self._apply(self._frozen or self._time_fields())
            self._frozen = None

    def _write_time(self, index: int, value: int) -> None:
        fields = self._frozen if self._frozen is not None else self._time_fields()
        fields[index] = self._decode(index, value)
        if self._frozen is None:
            self._apply(fields)                 # without SET a write takes effect at once

    def _apply(self, fields: dict[int, int]) -> None:
        """Move the guest offset so that the clock now reads ``fields``."""
        try:
            _check_fields(fields)
            year = fields[REG_CENTURY] * 100 + fields[REG_YEAR]
            target = calendar.timegm((year, fields[REG_MONTH], fields[REG_DAY], fields[REG_HOURS],
                                      fields[REG_MINUTES], fields[REG_SECONDS], 0, 0, 0))
        except (ValueError, OverflowError) as err:
            log.debug("rtc: guest set an invalid time %r (%s); clock unchanged", fields, err)
            return
        self._offset = target - int(self._clock())

    def _update_imminent(self) -> bool:
        if self._cmos[REG_B] & B_SET:
            return False                        # SET stops updates, and clears UIP
        return self.guest_time() % 1.0 >= 1.0 - UIP_WINDOW

    # --- time fields ---

    def _time_fields(self) -> dict[int, int]:
        """The clock now (or as frozen by SET), as plain integers."""
        if self._frozen is not None:
            return dict(self._frozen)
        t = time.gmtime(int(self.guest_time()))
        return {REG_SECONDS: t.tm_sec, REG_MINUTES: t.tm_min, REG_HOURS: t.tm_hour,
                REG_WEEKDAY: (t.tm_wday + 1) % 7 + 1, REG_DAY: t.tm_mday,
                REG_MONTH: t.tm_mon, REG_YEAR: t.tm_year % 100, REG_CENTURY: t.tm_year // 100}

    def _encode(self, index: int, value: int) -> int:
        b = self._cmos[REG_B]
        pm = 0
        if index == REG_HOURS and not b & B_24H:
            pm = HOUR_PM if value >= 12 else 0
            value = value % 12 or 12
        value = value if b & B_DM_BINARY else to_bcd(value % 100)
        return (value | pm) & 0xFF

    def _decode(self, index: int, raw: int) -> int:
        b = self._cmos[REG_B]
        pm = False
        if index == REG_HOURS and not b & B_24H:
            pm, raw = bool(raw & HOUR_PM), raw & ~HOUR_PM
        value = raw if b & B_DM_BINARY else from_bcd(raw)
        if index == REG_HOURS and not b & B_24H:
            value = value % 12 + (12 if pm else 0)
        return value


def _read_frozen(r: Reader, set_bit: bool) -> dict[int, int] | None:
    """The time fields held while B.SET is on (None when it is off)."""
    if "frozen" in r.state and r.state["frozen"] is None:
        if set_bit:
            raise StateError(f"{r.part}: register B has SET but frozen is null")
        return None
    if not set_bit:
        raise StateError(f"{r.part}: frozen time fields without SET in register B")
    values = r.ints("frozen", len(_TIME_REGISTERS), 0, 0xFF)
    return dict(zip(_TIME_REGISTERS, values))


def _check_fields(fields: dict[int, int]) -> None:
    """timegm() normalises 61 minutes into the next hour; the chip would not."""
    limits = {REG_SECONDS: 59, REG_MINUTES: 59, REG_HOURS: 23, REG_DAY: 31, REG_MONTH: 12}
    for index, top in limits.items():
        if not 0 <= fields[index] <= top:
            raise ValueError(f"register {index:#x} = {fields[index]}")
    if fields[REG_DAY] < 1 or fields[REG_MONTH] < 1:
        raise ValueError("day and month start at 1")
    if fields[REG_DAY] > calendar.monthrange(fields[REG_CENTURY] * 100 + fields[REG_YEAR],
                                             fields[REG_MONTH])[1]:
        raise ValueError("no such day in that month")
