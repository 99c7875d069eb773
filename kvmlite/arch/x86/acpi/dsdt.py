"""The Differentiated System Description Table (ACPI 6.3 §5.2.11.1):
the AML namespace the guest's interpreter loads.

    \\_S5        soft-off sleep type for PM1a_CNT (§7.4.2)
    \\_SB.Cxxx   one ACPI0007 processor device per vCPU (§8.4)
    \\_SB.PCI0   the PCI root bridge: windows in _CRS, INTx routing in _PRT
    \\_SB.COMn   16550 UARTs (PNP0501)
    \\_SB.KBD_   the i8042 keyboard controller (PNP0303)
    \\_SB.VRxx   virtio-mmio transports (LNRO0005)
    \\_SB.VGEN   the VM generation ID (_CID VM_GEN_COUNTER; ADDR gives its address)
    \\_GPE._E07  GPE 7 (pm.GPE_VMGENID): the generation ID changed (a restore): Notify(VGEN, 0x80)

With ACPI enabled Linux finds PCI only through a PNP0A03 root bridge here.
"""

from __future__ import annotations

from kvmlite.arch.x86 import layout
from kvmlite.arch.x86.acpi import aml, pm
from kvmlite.arch.x86.acpi import resources as res
from kvmlite.arch.x86.acpi.config import AcpiConfig, VirtioMmioDevice
from kvmlite.arch.x86.acpi.tables import sdt

DSDT_REVISION = 2                  # §5.2.11.1: 2 = 64-bit AML integers
PCI_SLOTS = range(1, 32)           # device 0 is the host bridge itself
PCI_PINS = 4                       # INTA..INTD
PCI_ADR_ANY_FUNCTION = 0xFFFF      # §6.1.1 _ADR low word: all functions
UART_PORTS = 8
I8042_PORTS = 1
VIRTIO_MMIO_HID = "LNRO0005"       # Linux drivers/virtio/virtio_mmio.c ACPI id
VMGENID_HID = "KVML0001"           # kvmlite's own id (vendor prefix + 4 hex digits); Linux matches the _CID
VMGENID_CID = "VM_GEN_COUNTER"     # drivers/virt/vmgenid.c


def dsdt(config: AcpiConfig) -> bytes:
    """The DSDT for ``config``."""
    devices = [*processors(config.num_cpus), pci_root(config.pci_mmio64)]
    devices += [serial_port(n) for n in config.serial_ports]
    if config.i8042:
        devices.append(keyboard())
    devices += [virtio_mmio(i, dev) for i, dev in enumerate(config.virtio_mmio)]
    devices.append(vm_generation_id())
    body = sleep_state_s5() + aml.scope("\\_SB", devices) + gpe_handlers()
    return sdt(b"DSDT", DSDT_REVISION, body)


def sleep_state_s5() -> bytes:
    """\\_S5 = Package {PM1a SLP_TYP, PM1b SLP_TYP, reserved, reserved}."""
    return aml.name("\\_S5", aml.package([pm.SLP_TYP_S5, pm.SLP_TYP_S5, 0, 0]))


def processors(num_cpus: int) -> list[bytes]:
    """ACPI0007 devices; _UID matches the MADT's ACPI Processor UID."""
    return [aml.device(f"C{cpu:03X}", [aml.name("_HID", "ACPI0007"), aml.name("_UID", cpu)])
            for cpu in range(num_cpus)]


def pci_root(mmio64: tuple[int, int] | None) -> bytes:
    """\\_SB.PCI0: segment 0, bus 0, conventional PCI through ports 0xCF8/0xCFC.
    (With ECAM and an MCFG, _HID would become PNP0A08; _CID stays.)"""
    return aml.device("PCI0", [
        aml.name("_HID", aml.eisa_id("PNP0A03")),
        aml.name("_CID", aml.eisa_id("PNP0A03")),
        aml.name("_ADR", 0), aml.name("_UID", 0),
        aml.name("_SEG", 0), aml.name("_BBN", 0),
        aml.name("_CRS", res.resource_template(pci_windows(mmio64))),
        aml.name("_PRT", pci_routing_table()),
    ])


def pci_windows(mmio64: tuple[int, int] | None) -> list[bytes]:
    """The root bridge's windows (§6.4.3.5): every bus, all I/O ports but
    the config mechanism's 0xCF8..0xCFF, the 32-bit BAR window and, if
    given, the 64-bit one."""
    windows = [
        res.word_bus_number(0, layout.ACPI_PCI_BUS_LAST),
        res.word_io(0, layout.ACPI_PCI_IO_LOW_END),
        res.word_io(layout.ACPI_PCI_IO_HIGH_START, layout.ACPI_PCI_IO_HIGH_END),
        res.dword_memory(layout.PCI_MMIO_START, layout.PCI_MMIO_END - 1),
    ]
    if mmio64 is not None:
        start, size = mmio64
        windows.append(res.qword_memory(start, start + size - 1))
    return windows


def pci_intx_gsi(slot: int, pin: int) -> int:
    """The GSI of ``slot``'s INTx ``pin`` (0 = INTA): the usual swizzle
    (slot + pin) mod 4 over the four PCI INTx lines."""
    return layout.IRQ_PCI_INTX[(slot + pin) % PCI_PINS]


def pci_routing_table() -> bytes:
    """_PRT (§6.2.13): Package {Address, Pin, Source, Source Index} per slot
    and pin; Source 0 means Source Index is a GSI (level, active low)."""
    entries = [aml.package([(slot << 16) | PCI_ADR_ANY_FUNCTION, pin, 0, pci_intx_gsi(slot, pin)])
               for slot in PCI_SLOTS for pin in range(PCI_PINS)]
    return aml.package(entries)


def serial_port(number: int) -> bytes:
    """COMn: a 16550A UART at its ISA port and IRQ."""
    port, irq = layout.PORT_COM[number - 1], layout.IRQ_COM[number - 1]
    return aml.device(f"COM{number}", [
        aml.name("_HID", aml.eisa_id("PNP0501")),
        aml.name("_UID", number),
        aml.name("_CRS", res.resource_template([res.io_port(port, UART_PORTS), res.irq_no_flags([irq])])),
    ])


def keyboard() -> bytes:
    """KBD_: the i8042 keyboard controller, data and status/command ports."""
    return aml.device("KBD", [
        aml.name("_HID", aml.eisa_id("PNP0303")),
        aml.name("_CRS", res.resource_template([
            res.io_port(layout.PORT_I8042_DATA, I8042_PORTS),
            res.io_port(layout.PORT_I8042_STATUS, I8042_PORTS),
            res.irq_no_flags([layout.IRQ_KEYBOARD]),
        ])),
    ])


def vm_generation_id() -> bytes:
    """VGEN: the VM generation ID device, as Linux's drivers/virt/vmgenid.c
    finds it (by _CID VM_GEN_COUNTER): ADDR returns the 16-byte ID's guest
    physical address as Package {low 32 bits, high 32 bits}; on Notify 0x80
    the driver reads the ID again and, since it changed, reseeds the
    kernel's random number generator (add_vmfork_randomness)."""
    addr = layout.VMGENID_ADDR
    return aml.device("VGEN", [
        aml.name("_HID", VMGENID_HID),
        aml.name("_CID", VMGENID_CID),
        aml.name("_DDN", "VM_Gen_Counter"),
        aml.method("ADDR", 0, [aml.return_(aml.package([addr & 0xFFFF_FFFF, addr >> 32]))]),
    ])


def gpe_handlers() -> bytes:
    """\\_GPE._Exx (§5.6.4.1): the edge-triggered GPE ``pm.GPE_VMGENID`` notifies VGEN."""
    return aml.scope("\\_GPE", [aml.method(f"_E{pm.GPE_VMGENID:02X}", 0, [aml.notify("\\_SB.VGEN", 0x80)])])


def virtio_mmio(index: int, dev: VirtioMmioDevice) -> bytes:
    """VRxx: one virtio-mmio transport.  Its interrupt is edge-triggered,
    active high, as the VMM signals it with one edge per notification
    (an irqfd), like Firecracker's and Cloud Hypervisor's."""
    return aml.device(f"VR{index:02X}", [
        aml.name("_HID", VIRTIO_MMIO_HID),
        aml.name("_UID", index),
        aml.name("_CRS", res.resource_template([
            res.memory32_fixed(dev.address, dev.size),
            res.extended_interrupt([dev.gsi], edge=True, active_low=False),
        ])),
    ])
