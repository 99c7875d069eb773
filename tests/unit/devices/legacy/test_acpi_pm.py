"""ACPI PM1 registers, PM timer and reset register, driven like ACPICA."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kvmlite.arch.x86 import layout
from kvmlite.devices.irq import RecordingIrqLine
from kvmlite.devices.legacy import acpi_pm as pm
from kvmlite.devices.legacy.acpi_pm import AcpiPm

from .portio import PortIo

EVT = layout.PORT_ACPI_PM1A_EVT
STS, EN = EVT, EVT + 2
CNT = layout.PORT_ACPI_PM1A_CNT
TMR = layout.PORT_ACPI_PM_TMR
RESET = layout.PORT_ACPI_RESET
GPE_STS, GPE_EN = layout.PORT_ACPI_GPE0, layout.PORT_ACPI_GPE0 + 1


class Rig:
    def __init__(self, **kwargs: Any) -> None:
        self.sci = RecordingIrqLine()
        self.poweroffs = 0
        self.resets = 0
        self.ns = 0
        self.pm = AcpiPm(self.sci, poweroff=self._poweroff, reset=self._reset,
                         clock_ns=lambda: self.ns, **kwargs)
        self.io = PortIo()
        for base, block in ((EVT, self.pm.event), (CNT, self.pm.control),
                            (TMR, self.pm.timer), (RESET, self.pm.reset), (GPE_STS, self.pm.gpe0)):
            self.io.bus.register(base, block.length, block, block.name)

    def _poweroff(self) -> None:
        self.poweroffs += 1

    def _reset(self) -> None:
        self.resets += 1


# --- PM1 event block and the SCI ---

def test_acpi_pm_power_button_raises_sci_only_when_enabled() -> None:
    rig = Rig()

    rig.pm.press_power_button()
    before_enable = rig.sci.level
    rig.io.outw(EN, pm.STS_PWRBTN)

    assert rig.io.inw(STS) & pm.STS_PWRBTN
    assert before_enable is False
    assert rig.sci.level is True


def test_acpi_pm_status_is_write_one_to_clear_and_drops_sci() -> None:
    rig = Rig()
    rig.io.outw(EN, pm.STS_PWRBTN)
    rig.pm.press_power_button()

    rig.io.outw(STS, 0)                           # writing 0 clears nothing
    still = rig.io.inw(STS) & pm.STS_PWRBTN
    rig.io.outw(STS, pm.STS_PWRBTN)

    assert still == pm.STS_PWRBTN
    assert rig.io.inw(STS) == 0
    assert rig.sci.level is False


def test_acpi_pm_enable_register_reads_back_defined_bits_only() -> None:
    rig = Rig()

    rig.io.outw(EN, 0xFFFF)

    assert rig.io.inw(EN) == pm.EN_WRITABLE


def test_acpi_pm_dword_access_covers_status_and_enable() -> None:
    rig = Rig()
    rig.pm.press_power_button()

    rig.io.outl(EVT, pm.STS_PWRBTN << 16)         # enable PWRBTN, clear nothing

    assert rig.io.inl(EVT) == (pm.STS_PWRBTN << 16) | pm.STS_PWRBTN
    assert rig.sci.level is True


def test_acpi_pm_clearing_enable_lowers_sci() -> None:
    rig = Rig()
    rig.io.outw(EN, pm.STS_PWRBTN)
    rig.pm.press_power_button()

    rig.io.outw(EN, 0)

    assert rig.sci.level is False
    assert rig.sci.edges == 1


# --- PM1 control: SCI_EN and sleep ---

def test_acpi_pm_sci_en_reads_set_from_reset_and_stays_set() -> None:
    rig = Rig()

    first = rig.io.inw(CNT)
    rig.io.outw(CNT, 0)

    assert first & pm.CNT_SCI_EN
    assert rig.io.inw(CNT) & pm.CNT_SCI_EN


def test_acpi_pm_s5_sleep_sequence_powers_off() -> None:
    # ACPICA acpi_hw_legacy_sleep: write SLP_TYP, then SLP_TYP | SLP_EN.
    rig = Rig()
    slp_typ = pm.SLP_TYP_S5 << pm.CNT_SLP_TYP_SHIFT
    cnt = rig.io.inw(CNT) & ~(pm.CNT_SLP_TYP_MASK | pm.CNT_SLP_EN)

    rig.io.outw(CNT, cnt | slp_typ)
    after_type = rig.poweroffs
    rig.io.outw(CNT, cnt | slp_typ | pm.CNT_SLP_EN)

    assert (after_type, rig.poweroffs) == (0, 1)


def test_acpi_pm_slp_en_reads_zero_and_slp_typ_reads_back() -> None:
    rig = Rig()

    rig.io.outw(CNT, 3 << pm.CNT_SLP_TYP_SHIFT | pm.CNT_SLP_EN)

    assert rig.io.inw(CNT) == 3 << pm.CNT_SLP_TYP_SHIFT | pm.CNT_SCI_EN


def test_acpi_pm_undeclared_sleep_type_is_ignored() -> None:
    rig = Rig()

    rig.io.outw(CNT, 3 << pm.CNT_SLP_TYP_SHIFT | pm.CNT_SLP_EN)

    assert rig.poweroffs == 0


def test_acpi_pm_s5_value_comes_from_constructor() -> None:
    rig = Rig(s5_slp_typ=7)

    rig.io.outw(CNT, pm.SLP_TYP_S5 << pm.CNT_SLP_TYP_SHIFT | pm.CNT_SLP_EN)
    default_value = rig.poweroffs
    rig.io.outw(CNT, 7 << pm.CNT_SLP_TYP_SHIFT | pm.CNT_SLP_EN)

    assert (default_value, rig.poweroffs) == (0, 1)


def test_acpi_pm_byte_write_of_high_control_byte_powers_off() -> None:
    rig = Rig()

    rig.io.outb(CNT + 1, (pm.SLP_TYP_S5 << pm.CNT_SLP_TYP_SHIFT | pm.CNT_SLP_EN) >> 8)

    assert rig.poweroffs == 1


# --- PM timer ---

def test_acpi_pm_timer_counts_at_3_579545_mhz() -> None:
    rig = Rig()

    rig.ns = 1_000_000_000

    assert rig.io.inl(TMR) == 3_579_545


def test_acpi_pm_timer_wraps_at_32_bits_by_default() -> None:
    rig = Rig()

    rig.ns = (1 << 32) * 1_000_000_000 // pm.PM_TIMER_HZ + 1_000_000   # just past one wrap

    assert rig.io.inl(TMR) < pm.PM_TIMER_HZ // 100


def test_acpi_pm_timer_24_bit_mode_keeps_top_byte_zero() -> None:
    rig = Rig(timer_bits=24)

    rig.ns = 7_000_000_000                        # 25 M ticks: past 2**24

    assert rig.io.inl(TMR) == (7 * pm.PM_TIMER_HZ) & 0xFFFFFF


def test_acpi_pm_timer_bad_width_is_refused() -> None:
    with pytest.raises(ValueError):
        Rig(timer_bits=16)


def test_acpi_pm_timer_ignores_writes_and_serves_narrow_reads() -> None:
    rig = Rig()
    rig.ns = 1_000_000_000

    rig.io.outl(TMR, 0)

    assert rig.io.inw(TMR + 2) == 3_579_545 >> 16


# --- reset register ---

def test_acpi_pm_reset_value_resets() -> None:
    rig = Rig()

    rig.io.outb(RESET, 0x02)
    wrong_value = rig.resets
    rig.io.outb(RESET, pm.RESET_VALUE)

    assert (wrong_value, rig.resets) == (0, 1)


def test_acpi_pm_garbage_from_guest_never_raises() -> None:
    rig = Rig(s5_slp_typ=6)                       # keep random writes from powering off often
    rng = random.Random(99)
    ports = [EVT + i for i in range(4)] + [CNT, CNT + 1] + [TMR + i for i in range(4)] + [RESET]

    for _ in range(5000):
        port = rng.choice(ports)
        if rng.random() < 0.5:
            rig.io.bus.write(port, rng.randbytes(rng.choice((1, 2, 4))))
        else:
            rig.io.bus.read(port, memoryview(bytearray(rng.choice((1, 2, 4)))))
    rig.io.outl(EVT, 0xFFFF)                      # clear all status, disable all

    assert rig.io.inw(CNT) & pm.CNT_SCI_EN
    assert rig.sci.level is False


def test_acpi_pm_matches_the_fadt_contract() -> None:
    contract = pytest.importorskip("kvmlite.arch.x86.acpi.pm")

    assert (pm.PM1_EVT_LEN, pm.PM1_CNT_LEN, pm.PM_TMR_LEN, pm.RESET_REG_LEN) == (
        contract.PM1_EVT_LEN, contract.PM1_CNT_LEN, contract.PM_TMR_LEN, contract.RESET_REG_LEN)
    assert (pm.SLP_TYP_S5, pm.PM_TIMER_HZ, pm.STS_PWRBTN, pm.CNT_SLP_EN) == (
        contract.SLP_TYP_S5, contract.PM_TIMER_HZ, contract.PM1_STS_PWRBTN, contract.PM1_CNT_SLP_EN)
    assert contract.is_poweroff(pm.SLP_TYP_S5 << pm.CNT_SLP_TYP_SHIFT | pm.CNT_SLP_EN)


# --- GPE0 block ---

def test_acpi_pm_gpe_raises_sci_once_enabled_and_clears_by_writing_one() -> None:
    # Arrange
    rig = Rig()
    # Act: the VMM raises GPE 7 before the guest enables it, then the guest enables it
    rig.pm.raise_gpe(7)
    before_enable = rig.sci.level
    rig.io.outb(GPE_EN, 1 << 7)
    raised = rig.sci.level
    rig.io.outb(GPE_STS, 1 << 7)          # the guest's handler acknowledges it
    # Assert
    assert before_enable is False and raised is True
    assert rig.sci.level is False and rig.io.inb(GPE_STS) == 0 and rig.io.inb(GPE_EN) == 1 << 7


def test_acpi_pm_gpe_word_access_reads_status_and_enable() -> None:
    rig = Rig()
    rig.io.outb(GPE_EN, 0x81)
    rig.pm.raise_gpe(0)
    assert rig.io.inw(GPE_STS) == 0x8101
    rig.io.outw(GPE_STS, 0x0001)          # clears status bit 0, and writes enable = 0
    assert rig.io.inw(GPE_STS) == 0x0000 and rig.sci.level is False


def test_acpi_pm_gpe_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="GPEs 0-7"):
        Rig().pm.raise_gpe(8)


def test_acpi_pm_gpe_state_round_trips_and_drives_sci() -> None:
    rig = Rig()
    rig.io.outb(GPE_EN, 1 << 7)
    rig.pm.raise_gpe(7)
    fresh = Rig()
    fresh.pm.restore_state(rig.pm.save_state())
    assert fresh.io.inw(GPE_STS) == (1 << 15) | (1 << 7) and fresh.sci.level is True
