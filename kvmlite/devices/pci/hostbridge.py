"""The host bridge at 00:00.0.

Linux's type-1 probe (arch/x86/pci/direct.c, ``pci_sanity_check``) accepts
the 0xCF8 mechanism only if some function on bus 0 has class 0x0600 (host
bridge) or an Intel/Compaq vendor ID, unless DMI reports a BIOS from 2001
or later; kvmlite has no DMI tables, so this function must be there.
"""

from __future__ import annotations

from kvmlite.devices.pci.config import PciIds
from kvmlite.devices.pci.function import PciFunction

PCI_VENDOR_ID_INTEL = 0x8086
#: an Intel device ID no Linux quirk matches (Cloud Hypervisor uses it too)
HOST_BRIDGE_DEVICE_ID = 0x0D57
PCI_CLASS_BRIDGE_HOST = 0x0600


class HostBridge(PciFunction):
    """A host bridge with no BARs and no interrupt."""

    def __init__(self) -> None:
        super().__init__(PciIds(vendor_id=PCI_VENDOR_ID_INTEL, device_id=HOST_BRIDGE_DEVICE_ID,
                                class_code=PCI_CLASS_BRIDGE_HOST << 8), "pci-host-bridge")
