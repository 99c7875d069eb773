"""Every guest-physical address, I/O port and interrupt number kvmlite uses
on x86, in one place.

Memory map (see ARCHITECTURE.md for the picture)::

    0x0000_0000  real-mode IVT / BDA                  RAM
    0x0000_0500  GDT (5 entries), IDT at 0x540                        RAM  (boot)
    0x0000_7000  boot_params ("zero page")             RAM  (boot)
    0x0000_9000  PML4, PDPT, 4 PDs (identity map 4 GiB) RAM  (boot)
    0x0000_f000  hvm_start_info + memmap (PVH)          RAM  (boot)
    0x0002_0000  kernel command line (64 KiB max)      RAM  (boot)
    0x0009_fc00  MP floating pointer + table (EBDA)    reserved
    0x000a_0000  VGA / option ROM hole                 reserved
    0x000e_0000  ACPI tables (RSDP first)              reserved
    0x0010_0000  kernel (bzImage protected-mode part / ELF segments)
    ...          RAM up to min(mem, 3 GiB)
    0xc000_0000  32-bit PCI hole: BARs from here
    0xd000_0000  virtio-mmio devices, 4 KiB apart
    0xe000_0000  PCI ECAM (reserved, not yet decoded)
    0xfec0_0000  IOAPIC
    0xfee0_0000  local APICs
    0xfffb_c000  KVM's TSS (3 pages) and identity-map page
    0x1_0000_0000 RAM above 4 GiB for guests larger than 3 GiB
"""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# --- low memory used while booting ---
BDA_EBDA_SEGMENT = 0x40E           # BIOS data area word: EBDA segment
GDT_ADDR = 0x500
GDT_ENTRIES = 5                    # null, null, __BOOT_CS 0x10, __BOOT_DS 0x18, TSS 0x20
IDT_ADDR = 0x540
BOOT_STACK_TOP = 0x8FF0            # initial RSP for 64-bit entry (unused by Linux)
ZERO_PAGE = 0x7000                 # struct boot_params
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000                   # 4 page directories: 0xB000..0xEFFF
IDENTITY_MAP_GIB = 4
PVH_INFO_ADDR = 0xF000             # struct hvm_start_info
PVH_MODLIST_ADDR = 0xF040          # hvm_modlist_entry (the initrd)
PVH_MEMMAP_ADDR = 0xF100           # hvm_memmap_table_entry[]
PVH_MEMMAP_MAX = 32
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000

EBDA_START = 0x9FC00
MPTABLE_ADDR = EBDA_START
VGA_HOLE_START = 0xA0000
ACPI_START = 0xE0000               # RSDP here; Linux also scans 0xE0000..0xFFFFF
VMGENID_ADDR = 0xFFF00             # the 16-byte VM generation ID (ACPI \_SB.VGEN.ADDR), in the reserved area
ACPI_END = 0x100000
BIOS_END = 0x100000
HIGH_MEMORY_START = 0x100000       # 1 MiB: kernel load address
BZIMAGE_LOAD_ADDR = HIGH_MEMORY_START

# --- the 32-bit hole ---
MMIO_HOLE_START = 0xC000_0000      # RAM stops here, resumes at 4 GiB
MMIO_HOLE_END = 0x1_0000_0000
PCI_MMIO_START = MMIO_HOLE_START   # 32-bit BAR window
PCI_MMIO_END = 0xD000_0000
VIRTIO_MMIO_START = 0xD000_0000
VIRTIO_MMIO_SIZE = 0x1000
VIRTIO_MMIO_MAX = 32
PCI_ECAM_START = 0xE000_0000
PCI_ECAM_SIZE = 0x1000_0000
IOAPIC_ADDR = 0xFEC0_0000
LAPIC_ADDR = 0xFEE0_0000
KVM_TSS_ADDR = 0xFFFB_D000         # 3 pages
KVM_IDENTITY_MAP_ADDR = 0xFFFB_C000
HIGH_RAM_START = 0x1_0000_0000
PCI_MMIO64_SIZE = 64 * GiB         # 64-bit BAR window placed after RAM

# --- I/O ports ---
PORT_PIT = 0x40                    # in-kernel PIT
PORT_I8042_DATA = 0x60
PORT_I8042_STATUS = 0x64           # status (read) / command (write)
PORT_RTC = 0x70                    # CMOS index 0x70, data 0x71
PORT_POST = 0x80                   # POST / io-delay port, ignored
PORT_IO_DELAY_ALT = 0xED           # alternative io-delay port, ignored
PORT_SYSTEM_CONTROL_A = 0x92       # PS/2 system control port A (fast A20, reset)
PORT_COM = (0x3F8, 0x2F8, 0x3E8, 0x2E8)
PORT_PCI_CONFIG_ADDR = 0xCF8
PORT_PCI_CONFIG_DATA = 0xCFC
PORT_ACPI_PM1A_EVT = 0x600         # PM1a_EVT_BLK (4 bytes: status, enable)
PORT_ACPI_PM1A_CNT = 0x604         # PM1a_CNT_BLK (2 bytes)
PORT_ACPI_PM_TMR = 0x608           # PM_TMR_BLK (4 bytes)
PORT_ACPI_RESET = 0x60C            # FADT RESET_REG (1 byte, value 0x01)
PORT_ACPI_GPE0 = 0x610             # GPE0_BLK (2 bytes: status, enable; acpi/pm.py GPE_VMGENID = VM generation ID changed)
ACPI_RESET_VALUE = 0x01
PORT_GUEST_EXIT = 0x501             # kvmlite exit device: a byte written here ends the VM with that status
PORT_PCI_IO_START = 0x1000         # I/O BAR window
PORT_PCI_IO_END = 0x10000

# --- interrupts (GSIs; ISA IRQs 0-15 are identity-mapped to IOAPIC pins) ---
IRQ_PIT = 0
IRQ_KEYBOARD = 1
IRQ_COM = (4, 3, 4, 3)             # COM1..COM4
IRQ_RTC = 8
IRQ_ACPI_SCI = 9
IRQ_MOUSE = 12
IOAPIC_PINS = 24
IOAPIC_PIN_PIT = 2                 # GSI 0 (PIT) arrives on IOAPIC pin 2 (ISA override)
IRQ_PCI_INTX = (10, 11, 14, 15)    # PCI INTA..INTD (level, active low)
IRQ_VIRTIO_MMIO_FIRST = 16         # virtio-mmio devices: GSIs 16..23 then upward via routing
GSI_MSI_FIRST = 24                 # GSIs above the IOAPIC pins, for MSI routes

# --- CPU ---
APIC_DEFAULT_BASE = LAPIC_ADDR | (1 << 11)  # enable bit; BSP bit added for CPU 0

# --- ACPI (owned by kvmlite/arch/x86/acpi; ACPI 6.3 §5.2, §6.4) ---
ACPI_RSDP_ADDR = ACPI_START        # RSDP first: Linux scans 0xE0000..0xFFFFF on 16-byte steps
ACPI_PCI_IO_LOW_END = PORT_PCI_CONFIG_ADDR - 1   # PCI0 I/O window 0x0000..0x0CF7
ACPI_PCI_IO_HIGH_START = 0x0D00    # PCI0 I/O window 0x0D00..0xFFFF (skips 0xCF8..0xCFF)
ACPI_PCI_IO_HIGH_END = 0xFFFF
ACPI_PCI_BUS_LAST = 0xFF           # PCI0 decodes buses 0..255
