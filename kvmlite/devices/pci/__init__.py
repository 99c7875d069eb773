"""PCI: configuration space, the root complex on bus 0, MSI-X.

The VMM builds a :class:`PciRoot` over its MMIO and port buses and adds
functions (such as :class:`kvmlite.devices.virtio.transport.pci.VirtioPciTransport`)
to it; see :mod:`kvmlite.devices.pci.root`.
"""

from kvmlite.devices.pci.config import Bar, BarKind, PciConfigSpace, PciIds
from kvmlite.devices.pci.ecam import PciEcam
from kvmlite.devices.pci.function import PciFunction
from kvmlite.devices.pci.msix import MsixCapability
from kvmlite.devices.pci.root import PciRoot, PciWindows

__all__ = ["Bar", "BarKind", "MsixCapability", "PciConfigSpace", "PciEcam", "PciFunction",
           "PciIds", "PciRoot", "PciWindows"]
