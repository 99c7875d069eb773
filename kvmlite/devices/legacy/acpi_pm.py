"""ACPI fixed-hardware power management registers (ACPI 6.3 §4.8.3).

The registers the FADT points at (the contract is
:mod:`kvmlite.arch.x86.acpi.pm`), each block its own bus device::

    block         attribute  register at                     length
    PM1a_EVT_BLK  event      layout.PORT_ACPI_PM1A_EVT       4  PM1_STS (+0), PM1_EN (+2)
    PM1a_CNT_BLK  control    layout.PORT_ACPI_PM1A_CNT       2  PM1_CNT
    PM_TMR_BLK    timer      layout.PORT_ACPI_PM_TMR         4  PM_TMR
    RESET_REG     reset      layout.PORT_ACPI_RESET          1
    GPE0_BLK      gpe0       layout.PORT_ACPI_GPE0           2  GPE0_STS (+0), GPE0_EN (+1)

* PM1_STS bits are write-1-to-clear (§4.8.3.1.1); the SCI is asserted while
  any status bit is set together with its enable bit in PM1_EN (level).
* PM1_CNT: SCI_EN reads 1 from the start, since there is no SMM firmware
  to hand over to the OS (the FADT's SMI_CMD is 0, §4.8.2.5).  Writing
  SLP_EN with SLP_TYP = the S5 value from \\_S5 calls ``poweroff``; other
  sleep types are not declared in the DSDT and are ignored.
* PM_TMR counts at 3.579545 MHz from the host's monotonic clock; 32 bits
  wide by default (the FADT sets TMR_VAL_EXT), 24 if asked.  TMR_STS is not
  implemented (the FADT allows it: Linux does not use the timer interrupt).
* Writing the FADT's RESET_VALUE (0x01) to RESET_REG calls ``reset``.
* GPE0 (§4.8.4.1): eight general-purpose events, a status byte
  (write-1-to-clear) and an enable byte; the SCI is also asserted while
  any GPE status bit is set with its enable bit.  The VMM raises one with
  :meth:`AcpiPm.raise_gpe` (``pm.GPE_VMGENID``: the VM generation ID
  changed, whose ``\\_GPE._Exx`` notifies ``\\_SB.VGEN``).

Every access width is accepted: a block is handled byte by byte.

Threads and locks: vCPU threads reach the four blocks under four bus locks;
:meth:`AcpiPm.press_power_button` comes from the control thread.  ``_lock``
guards the PM1 registers and is taken inside the bus locks.  The SCI line
and the ``poweroff``/``reset`` callbacks are called with ``_lock`` held: the
callbacks must only request the stop or reset, not wait for it.

Snapshots: :meth:`AcpiPm.save_state` keeps PM1_STS, PM1_EN, PM1_CNT's
stored bits and the PM timer's count.  Restoring sets the timer's epoch so
that it reads the saved count at the moment of the restore and counts on
from there: a guest that uses PM_TMR as a clocksource sees no jump (the
time the VM spent saved does not exist for it).  The SCI is driven to the
level STS & EN imply.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from kvmlite.base.state import Reader, StateError
from kvmlite.devices.irq import IrqLine
from kvmlite.devices.legacy.ports import PortView

log = logging.getLogger(__name__)

PM1_EVT_LEN = 4
PM1_CNT_LEN = 2
PM_TMR_LEN = 4
RESET_REG_LEN = 1
GPE0_BLK_LEN = 2           # one status byte, one enable byte: GPEs 0-7
GPE_COUNT = 8 * GPE0_BLK_LEN // 2

# §4.8.3.1.1 PM1 Status and §4.8.3.1.2 PM1 Enable registers
STS_TMR = 1 << 0
STS_BM = 1 << 4
STS_GBL = 1 << 5
STS_PWRBTN = 1 << 8
STS_SLPBTN = 1 << 9
STS_RTC = 1 << 10
STS_PCIEXP_WAKE = 1 << 14
STS_WAK = 1 << 15
EN_WRITABLE = STS_TMR | STS_GBL | STS_PWRBTN | STS_SLPBTN | STS_RTC | STS_PCIEXP_WAKE
STS_DEFINED = EN_WRITABLE | STS_BM | STS_WAK
SCI_SOURCES = STS_TMR | STS_GBL | STS_PWRBTN | STS_SLPBTN | STS_RTC   # bit 14 in EN is a *disable*

# §4.8.3.2.1 PM1 Control register
CNT_SCI_EN = 1 << 0
CNT_BM_RLD = 1 << 1
CNT_GBL_RLS = 1 << 2       # write-only: would signal firmware; there is none
CNT_SLP_TYP_SHIFT = 10
CNT_SLP_TYP_MASK = 0x7 << CNT_SLP_TYP_SHIFT
CNT_SLP_EN = 1 << 13       # write-only
CNT_STORED = CNT_BM_RLD | CNT_SLP_TYP_MASK

SLP_TYP_S5 = 5             # what the DSDT's \_S5 package says
PM_TIMER_HZ = 3_579_545    # §4.8.3.3
RESET_VALUE = 0x01


class AcpiPm:
    def __init__(self, sci: IrqLine, *, poweroff: Callable[[], None], reset: Callable[[], None],
                 s5_slp_typ: int = SLP_TYP_S5, timer_bits: int = 32,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        if timer_bits not in (24, 32):
            raise ValueError(f"PM timer is 24 or 32 bits wide, not {timer_bits}")
        self._sci = sci
        self._poweroff = poweroff
        self._reset = reset
        self._s5 = s5_slp_typ
        self._timer_mask = (1 << timer_bits) - 1
        self._clock_ns = clock_ns
        self._epoch_ns = clock_ns()
        self._lock = threading.Lock()
        self._sts = 0
        self._en = 0
        self._cnt = CNT_SCI_EN
        self._gpe_sts = 0
        self._gpe_en = 0
        self._sci_level = False
        self.event = PortView("acpi-pm1a-evt", PM1_EVT_LEN, self._read_event, self._write_event)
        self.control = PortView("acpi-pm1a-cnt", PM1_CNT_LEN, self._read_control, self._write_control)
        self.timer = PortView("acpi-pm-tmr", PM_TMR_LEN, self._read_timer, _ignore_write)
        self.reset = PortView("acpi-reset", RESET_REG_LEN, _read_zero, self._write_reset)
        self.gpe0 = PortView("acpi-gpe0", GPE0_BLK_LEN, self._read_gpe0, self._write_gpe0)

    # --- host side (any thread) ---

    def press_power_button(self) -> None:
        """A press of the fixed-feature power button (§4.8.2.2.1.1): sets
        PWRBTN_STS, which raises the SCI once the guest has set PWRBTN_EN."""
        with self._lock:
            self._sts |= STS_PWRBTN
            self._update_sci()

    def raise_gpe(self, gpe: int) -> None:
        r"""Set GPE ``gpe``'s status bit (§4.8.4.1): the SCI fires once the
        guest has enabled it, and the guest runs ``\_GPE._Exx``."""
        if not 0 <= gpe < GPE_COUNT:
            raise ValueError(f"GPE {gpe}: the GPE0 block has GPEs 0-{GPE_COUNT - 1}")
        with self._lock:
            self._gpe_sts |= 1 << gpe
            self._update_sci()

    # --- snapshots ---

    def save_state(self) -> dict:
        with self._lock:
            return {"sts": self._sts, "en": self._en, "cnt": self._cnt, "timer": self.timer_value(),
                    "gpe_sts": self._gpe_sts, "gpe_en": self._gpe_en}

    def restore_state(self, state: dict, part: str = "acpi-pm") -> None:
        """Load :meth:`save_state`'s dict; the timer counts on from the saved value."""
        r = Reader(state, part)
        sts, en = r.int("sts", 0, 0xFFFF), r.int("en", 0, 0xFFFF)
        cnt, ticks = r.int("cnt", 0, 0xFFFF), r.int("timer", 0, self._timer_mask)
        gpe_sts, gpe_en = r.int("gpe_sts", 0, 0xFF), r.int("gpe_en", 0, 0xFF)
        if sts & ~STS_DEFINED:
            raise StateError(f"{part}: sts={sts:#x} has bits PM1_STS does not have")
        if en & ~EN_WRITABLE:
            raise StateError(f"{part}: en={en:#x} has bits PM1_EN does not have")
        if cnt & ~(CNT_STORED | CNT_SCI_EN):
            raise StateError(f"{part}: cnt={cnt:#x} has write-only or reserved bits")
        # ceil: (elapsed * HZ) // 1e9 is then exactly ``ticks`` (a tick is > 1 ns)
        elapsed_ns = -(-ticks * 1_000_000_000 // PM_TIMER_HZ)
        with self._lock:
            self._sts, self._en, self._cnt = sts, en, cnt | CNT_SCI_EN
            self._gpe_sts, self._gpe_en = gpe_sts, gpe_en
            self._epoch_ns = self._clock_ns() - elapsed_ns
            self._sci_level = self._sci_pending()
            self._sci.set_level(self._sci_level)     # a fresh line: drive it either way

    # --- PM1a_EVT: PM1_STS at 0-1, PM1_EN at 2-3 ---

    def _read_event(self, offset: int, data: memoryview) -> None:
        with self._lock:
            _read_bytes((self._en << 16 | self._sts).to_bytes(4, "little"), offset, data)

    def _write_event(self, offset: int, data: bytes) -> None:
        with self._lock:
            clear_sts, en = _merge(offset, data, 0, 0), _merge(offset, data, 2, self._en)
            self._sts &= ~clear_sts
            self._en = en & EN_WRITABLE
            self._update_sci()

    # --- GPE0_BLK ---

    def _read_gpe0(self, offset: int, data: memoryview) -> None:
        with self._lock:
            _read_bytes(bytes([self._gpe_sts, self._gpe_en]), offset, data)

    def _write_gpe0(self, offset: int, data: bytes) -> None:
        with self._lock:
            clear, en = _merge(offset, data, 0, 0), _merge(offset, data, 1, self._gpe_en)
            self._gpe_sts &= ~clear & 0xFF
            self._gpe_en = en & 0xFF
            self._update_sci()

    def _sci_pending(self) -> bool:
        return bool(self._sts & self._en & SCI_SOURCES) or bool(self._gpe_sts & self._gpe_en)

    def _update_sci(self) -> None:
        level = self._sci_pending()
        if level != self._sci_level:
            self._sci_level = level
            self._sci.set_level(level)

    # --- PM1a_CNT ---

    def _read_control(self, offset: int, data: memoryview) -> None:
        with self._lock:
            _read_bytes((self._cnt | CNT_SCI_EN).to_bytes(2, "little"), offset, data)

    def _write_control(self, offset: int, data: bytes) -> None:
        with self._lock:
            value = _merge(offset, data, 0, self._cnt)
            self._cnt = (value & CNT_STORED) | CNT_SCI_EN
            if value & CNT_SLP_EN:
                self._sleep((value & CNT_SLP_TYP_MASK) >> CNT_SLP_TYP_SHIFT)

    def _sleep(self, slp_typ: int) -> None:
        if slp_typ == self._s5:
            log.info("acpi: guest entered S5 (soft off)")
            self._poweroff()
        else:
            log.info("acpi: guest asked for sleep type %d, which is not declared; ignored", slp_typ)

    # --- PM_TMR, RESET_REG ---

    def timer_value(self) -> int:
        ticks = (self._clock_ns() - self._epoch_ns) * PM_TIMER_HZ // 1_000_000_000
        return ticks & self._timer_mask

    def _read_timer(self, offset: int, data: memoryview) -> None:
        _read_bytes(self.timer_value().to_bytes(4, "little"), offset, data)

    def _write_reset(self, offset: int, data: bytes) -> None:
        if offset == 0 and data and data[0] == RESET_VALUE:
            log.info("acpi: guest wrote RESET_REG")
            with self._lock:
                self._reset()


def _read_bytes(register: bytes, offset: int, data: memoryview) -> None:
    """Copy ``register[offset:]`` into ``data``; past its end reads 0xFF."""
    for i in range(len(data)):
        data[i] = register[offset + i] if offset + i < len(register) else 0xFF


def _merge(offset: int, data: bytes, start: int, old: int) -> int:
    """The 16-bit register at ``start`` after writing ``data`` at ``offset``:
    bytes of the write that fall on it replace the old ones."""
    value = old
    for i, byte in enumerate(data):
        shift = (offset + i - start) * 8
        if 0 <= shift < 16:
            value = (value & ~(0xFF << shift)) | byte << shift
    return value


def _read_zero(offset: int, data: memoryview) -> None:
    data[:] = bytes(len(data))


def _ignore_write(offset: int, data: bytes) -> None:
    pass
