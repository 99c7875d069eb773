"""Virtio devices (virtio 1.2): split virtqueues and the block, console and
entropy devices.  Transports live in :mod:`kvmlite.devices.virtio.transport`."""

from kvmlite.devices.virtio.block import VirtioBlock
from kvmlite.devices.virtio.console import VirtioConsole
from kvmlite.devices.virtio.disk import RawDisk
from kvmlite.devices.virtio.queue import (AvailIndexError, ChainLengthError, ChainLoopError, DescriptorAddressError,
                                          DescriptorChain, DescriptorIndexError, DescriptorOrderError,
                                          IndirectTableError, NestedIndirectError, Queue, QueueError,
                                          RingAddressError)
from kvmlite.devices.virtio.rng import VirtioRng

__all__ = [
    "AvailIndexError", "ChainLengthError", "ChainLoopError", "DescriptorAddressError", "DescriptorChain",
    "DescriptorIndexError", "DescriptorOrderError", "IndirectTableError", "NestedIndirectError",
    "Queue", "QueueError", "RawDisk", "RingAddressError", "VirtioBlock", "VirtioConsole", "VirtioRng",
]
