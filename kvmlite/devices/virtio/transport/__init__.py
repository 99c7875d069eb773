"""virtio transports: PCI (:mod:`.pci`) and MMIO (:mod:`.mmio`), sharing the
feature/status/queue logic of :mod:`.common`."""
