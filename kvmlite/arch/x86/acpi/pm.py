"""The ACPI fixed-hardware power-management registers the FADT promises
(ACPI 6.3 §4.8.3) — the contract the VMM's ACPI PM device implements.

Ports (from :mod:`kvmlite.arch.x86.layout`)::

    PORT_ACPI_PM1A_EVT + 0   PM1a_STS  16 bits, write-1-to-clear
    PORT_ACPI_PM1A_EVT + 2   PM1a_EN   16 bits, read/write
    PORT_ACPI_PM1A_CNT       PM1a_CNT  16 bits
    PORT_ACPI_PM_TMR         PM_TMR    32 bits, read-only, 3.579545 MHz
    PORT_ACPI_RESET          RESET_REG  8 bits, writing ACPI_RESET_VALUE resets
    PORT_ACPI_GPE0 + 0       GPE0_STS   8 bits, write-1-to-clear (GPEs 0-7)
    PORT_ACPI_GPE0 + 1       GPE0_EN    8 bits, read/write

What the device must do:

* PM1a_CNT: writing SLP_EN with SLP_TYP == :data:`SLP_TYP_S5` is the
  guest's ACPI power-off (ACPICA writes SLP_TYP first, then SLP_TYP|SLP_EN,
  as 16-bit writes).  SLP_EN reads as 0.  SCI_EN reads as 1: the FADT has
  SMI_CMD = 0, so the machine is always in ACPI mode (§4.8.2.5).  Other
  SLP_TYP values are sleep states the DSDT does not declare; ignore them.
* PM1a_STS/PM1a_EN: the FADT declares a fixed-feature power button
  (PWR_BUTTON flag clear), so a VMM "press" sets PWRBTN_STS and, while
  ``PM1_STS & PM1_EN`` is non-zero, asserts the SCI.  TMR_STS/TMR_EN may
  stay unimplemented (always 0).
* SCI: GSI :data:`~kvmlite.arch.x86.layout.IRQ_ACPI_SCI`, level-triggered,
  active high (the MADT overrides ISA IRQ 9 so): drive the line high while
  an enabled status bit is set, low when the guest clears it.
* PM_TMR: 32-bit counter (the FADT sets TMR_VAL_EXT) at
  :data:`PM_TIMER_HZ`, wrapping at 2**32.
* Accesses: the FADT's generic addresses say word (PM1), dword (timer) and
  byte (reset); accept narrower accesses too.
"""

from __future__ import annotations

# §4.8.3.1.1 PM1 Status Registers
PM1_STS_TMR = 1 << 0
PM1_STS_PWRBTN = 1 << 8
PM1_STS_WAK = 1 << 15
# §4.8.3.1.2 PM1 Enable Registers
PM1_EN_TMR = 1 << 0
PM1_EN_PWRBTN = 1 << 8
# §4.8.3.2.1 PM1 Control Registers
PM1_CNT_SCI_EN = 1 << 0
PM1_CNT_SLP_TYP_SHIFT = 10
PM1_CNT_SLP_TYP_MASK = 0x7 << PM1_CNT_SLP_TYP_SHIFT
PM1_CNT_SLP_EN = 1 << 13

# §7.4.2: \_S5 = Package {SLP_TYP for PM1a_CNT, for PM1b_CNT, 0, 0}
SLP_TYP_S5 = 5

# §4.8.3.3 Power Management Timer: 3.579545 MHz
PM_TIMER_HZ = 3_579_545

# Register block lengths the FADT gives (§5.2.9 PM1_EVT_LEN, ...)
PM1_EVT_LEN = 4
PM1_CNT_LEN = 2
PM_TMR_LEN = 4
RESET_REG_LEN = 1
GPE0_BLK_LEN = 2           # §4.8.4.1: status half, enable half
GPE_VMGENID = 7            # \_GPE._E07: Notify(\_SB.VGEN, 0x80) (acpiexec's own tests claim GPE 0)


def slp_typ(pm1_cnt: int) -> int:
    """The SLP_TYP field of a PM1 control value."""
    return (pm1_cnt & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT


def is_poweroff(pm1_cnt_write: int) -> bool:
    """True if a write to PM1a_CNT asks for S5 (soft off)."""
    return bool(pm1_cnt_write & PM1_CNT_SLP_EN) and slp_typ(pm1_cnt_write) == SLP_TYP_S5
