"""The host side of kvmlite's networking: backends for virtio-net.

A backend moves Ethernet frames between the virtio-net device and the host
(:class:`~kvmlite.net.backend.NetBackend`): a tap device
(:mod:`kvmlite.net.tap`, frames with a virtio-net header, offloads carried
through) or passt (:mod:`kvmlite.net.passt`, user-mode networking over a
Unix socket).  This package sits beneath the devices and imports nothing
from them, the VMM, the control socket or the CLI.
"""

from kvmlite.net.backend import VNET_HDR_LEN, NetBackend
from kvmlite.net.errors import BackendGone, NetError
from kvmlite.net.mac import format_mac, mac_from_name, parse_mac
from kvmlite.net.passt import PasstBackend, parse_hostfwd
from kvmlite.net.tap import TapBackend

__all__ = ["VNET_HDR_LEN", "BackendGone", "NetBackend", "NetError", "PasstBackend", "TapBackend",
           "format_mac", "mac_from_name", "parse_hostfwd", "parse_mac"]
