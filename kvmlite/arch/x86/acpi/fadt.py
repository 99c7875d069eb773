"""The Fixed ACPI Description Table, revision 6 (ACPI 6.3 §5.2.9).

A *full* FADT, not HW_REDUCED_ACPI: a hardware-reduced FADT tells Linux
there is no legacy PIC, and with it go the ISA IRQs the serial ports use.
The PM1a event/control blocks let the guest's ACPI power-off reach the VMM
(see :mod:`kvmlite.arch.x86.acpi.pm` for the register contract).
"""

from __future__ import annotations

import struct

from kvmlite.arch.x86 import layout
from kvmlite.arch.x86.acpi import pm
from kvmlite.arch.x86.acpi.tables import (
    ACCESS_BYTE, ACCESS_DWORD, ACCESS_WORD, GAS_SYSTEM_IO, gas, sdt,
)

FADT_REVISION = 6
FADT_MINOR_REVISION = 3            # ACPI 6.3
FADT_SIZE = 276

PM_PROFILE_UNSPECIFIED = 0
# §5.2.9 P_LVL2_LAT > 100 and P_LVL3_LAT > 1000 mean "C2/C3 not supported"
P_LVL2_LAT_NONE = 101
P_LVL3_LAT_NONE = 1001

# §5.2.9.3 IA-PC Boot Architecture Flags
BOOT_LEGACY_DEVICES = 1 << 0
BOOT_8042 = 1 << 1
BOOT_VGA_NOT_PRESENT = 1 << 2

# §5.2.9 Table 5.34 Fixed ACPI Description Table Fixed Feature Flags
F_WBINVD = 1 << 0
F_PROC_C1 = 1 << 2
F_PWR_BUTTON = 1 << 4              # set = NO fixed-feature power button
F_SLP_BUTTON = 1 << 5              # set = NO fixed-feature sleep button
F_FIX_RTC = 1 << 6                 # set = RTC wake status not in PM1 registers
F_TMR_VAL_EXT = 1 << 8
F_RESET_REG_SUP = 1 << 10
F_HW_REDUCED_ACPI = 1 << 20

# Chosen flags, and why:
#   WBINVD       required of every ACPI machine; KVM executes WBINVD.
#   PROC_C1      HLT works on every vCPU (KVM exits or polls on it).
#   SLP_BUTTON   no sleep button.  PWR_BUTTON is *clear*: the power button
#                is a fixed feature (PM1 PWRBTN_STS), so the VMM can ask the
#                guest to shut down cleanly.
#   FIX_RTC      the PM device has no RTC_STS/RTC_EN bits.
#   TMR_VAL_EXT  the PM timer is 32 bits wide.
#   RESET_REG_SUP  RESET_REG below resets the machine.
#   HW_REDUCED_ACPI is deliberately absent (see the module docstring).
FADT_FLAGS = (F_WBINVD | F_PROC_C1 | F_SLP_BUTTON | F_FIX_RTC
              | F_TMR_VAL_EXT | F_RESET_REG_SUP)

# Offsets 36..131: the ACPI 1.0 part plus RESET_REG, ARM_BOOT_ARCH, minor version
_LEGACY_FORMAT = "<IIBBHIBBBBIIIIIIII8BHHHHBBBBBHBI12sBHB"
# Offsets 132..275: 64-bit pointers, extended blocks, sleep regs, hypervisor id
_EXTENDED_FORMAT = "<QQ12s12s12s12s12s12s12s12s12s12s8s"


def fadt(facs_addr: int, dsdt_addr: int, i8042: bool) -> bytes:
    """The FADT; FACS and DSDT addresses go in both the 32- and 64-bit
    fields (equal values, so ACPICA sees no conflict)."""
    body = _legacy_part(facs_addr, dsdt_addr, i8042) + _extended_part(facs_addr, dsdt_addr)
    table = sdt(b"FACP", FADT_REVISION, body)
    assert len(table) == FADT_SIZE
    return table


def _boot_arch(i8042: bool) -> int:
    return BOOT_LEGACY_DEVICES | BOOT_VGA_NOT_PRESENT | (BOOT_8042 if i8042 else 0)


def _legacy_part(facs_addr: int, dsdt_addr: int, i8042: bool) -> bytes:
    reset_reg = gas(GAS_SYSTEM_IO, pm.RESET_REG_LEN, ACCESS_BYTE, layout.PORT_ACPI_RESET)
    return struct.pack(
        _LEGACY_FORMAT,
        facs_addr, dsdt_addr, 0, PM_PROFILE_UNSPECIFIED, layout.IRQ_ACPI_SCI,
        0, 0, 0, 0, 0,                 # SMI_CMD=0 (always ACPI mode), no S4BIOS, no P-states
        layout.PORT_ACPI_PM1A_EVT, 0, layout.PORT_ACPI_PM1A_CNT, 0, 0,
        layout.PORT_ACPI_PM_TMR, layout.PORT_ACPI_GPE0, 0,  # no PM1b, PM2 or GPE1 blocks
        pm.PM1_EVT_LEN, pm.PM1_CNT_LEN, 0, pm.PM_TMR_LEN, pm.GPE0_BLK_LEN, 0, 0, 0,
        P_LVL2_LAT_NONE, P_LVL3_LAT_NONE, 0, 0,   # no cache flush via FLUSH_SIZE
        0, 0, 0, 0, 0,                 # duty cycle, no RTC alarm/century registers
        _boot_arch(i8042), 0, FADT_FLAGS,
        reset_reg, layout.ACPI_RESET_VALUE, 0, FADT_MINOR_REVISION,
    )


def _extended_part(facs_addr: int, dsdt_addr: int) -> bytes:
    none = bytes(12)
    return struct.pack(
        _EXTENDED_FORMAT,
        facs_addr, dsdt_addr,
        gas(GAS_SYSTEM_IO, pm.PM1_EVT_LEN, ACCESS_WORD, layout.PORT_ACPI_PM1A_EVT), none,
        gas(GAS_SYSTEM_IO, pm.PM1_CNT_LEN, ACCESS_WORD, layout.PORT_ACPI_PM1A_CNT), none,
        none,
        gas(GAS_SYSTEM_IO, pm.PM_TMR_LEN, ACCESS_DWORD, layout.PORT_ACPI_PM_TMR),
        gas(GAS_SYSTEM_IO, pm.GPE0_BLK_LEN, ACCESS_BYTE, layout.PORT_ACPI_GPE0),
        none, none, none,              # GPE1, SLEEP_CONTROL/STATUS (HW-reduced only)
        bytes(8),                      # Hypervisor Vendor Identity: none
    )
