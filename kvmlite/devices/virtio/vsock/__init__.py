"""virtio-vsock (virtio 1.2 §5.10) with Firecracker's hybrid host side over
Unix sockets: :mod:`.packet` (the header and its checks), :mod:`.connection`
(one stream and its credit), :mod:`.unix` (the listener, CONNECT lines,
``<uds_path>_PORT``), :mod:`.mux` (the connection table), :mod:`.device`
(the queues).  docs/vsock.md describes it for users."""

from kvmlite.devices.virtio.vsock.device import STAT_NAMES, VirtioVsock
from kvmlite.devices.virtio.vsock.mux import VsockLimits
from kvmlite.devices.virtio.vsock.unix import VsockError

__all__ = ["STAT_NAMES", "VirtioVsock", "VsockError", "VsockLimits"]
