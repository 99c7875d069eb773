"""What the virtio-net device asks of a network backend.

The device (``kvmlite/devices/virtio/net.py``) holds a backend by this
structural interface and imports nothing from :mod:`kvmlite.net`; the VMM
hands it a :class:`~kvmlite.net.tap.TapBackend` or a
:class:`~kvmlite.net.passt.PasstBackend`.

Threads: the device's event loop thread calls everything but
:meth:`NetBackend.close`, which the VMM calls once the loop no longer
watches :meth:`NetBackend.fileno`.  Backends take no locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kvmlite.net.features import VNET_HDR_LEN

__all__ = ["NetBackend", "VNET_HDR_LEN"]


class NetBackend(Protocol):
    """A source and sink of Ethernet frames.

    Attributes:
        vnet_hdr: True when every frame sent and received starts with the
            12-byte ``struct virtio_net_hdr_v1`` (a tap with
            ``IFF_VNET_HDR``); False for bare Ethernet frames (passt).
        mtu: an MTU to offer the guest (``VIRTIO_NET_F_MTU``), or None.
    """

    vnet_hdr: bool
    mtu: int | None

    def fileno(self) -> int:
        """Readable when :meth:`recv_into` may return a frame; writable when
        :meth:`send` or :meth:`flush` can go on."""
        ...

    def recv_into(self, buf: memoryview) -> int:
        """One whole frame into ``buf``; its length.  ``BlockingIOError``
        when none waits; ``ConnectionError`` when the backend is gone."""
        ...

    def send(self, parts: Sequence[memoryview | bytes]) -> bool:
        """One whole frame gathered from ``parts``.  True when taken (the
        backend keeps any unsent tail), False when no frame can be taken
        now (nothing consumed); ``ConnectionError`` when gone."""
        ...

    def flush(self) -> bool:
        """Push a kept tail; True when nothing is left."""
        ...

    def offloads(self) -> int:
        """The virtio-net feature bits this backend can carry (virtio 1.2 §5.1.3)."""
        ...

    def set_offloads(self, negotiated: int) -> None:
        """Tell the backend which features the driver accepted."""
        ...

    def close(self) -> None:
        ...
