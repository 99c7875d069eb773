"""virtio-net numbers the backends need: feature bits and the header that
leads every frame on a tap with ``IFF_VNET_HDR``.

Copied from the virtio 1.2 specification; the device model
(``kvmlite/devices/virtio/net.py``) keeps its own copy, since devices import
nothing from :mod:`kvmlite.net`.
"""

from __future__ import annotations

import ctypes

# virtio 1.2 §5.1.3 "Feature bits"
VIRTIO_NET_F_CSUM = 1 << 0              # device handles packets with partial checksum
VIRTIO_NET_F_GUEST_CSUM = 1 << 1        # driver handles packets with partial checksum
VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 1 << 2
VIRTIO_NET_F_MTU = 1 << 3               # device reports a maximum MTU
VIRTIO_NET_F_MAC = 1 << 5               # device has a given MAC address
VIRTIO_NET_F_GUEST_TSO4 = 1 << 7        # driver can receive TSOv4
VIRTIO_NET_F_GUEST_TSO6 = 1 << 8        # driver can receive TSOv6
VIRTIO_NET_F_GUEST_ECN = 1 << 9         # driver can receive TSO with ECN
VIRTIO_NET_F_GUEST_UFO = 1 << 10        # driver can receive UFO
VIRTIO_NET_F_HOST_TSO4 = 1 << 11        # device can receive TSOv4
VIRTIO_NET_F_HOST_TSO6 = 1 << 12        # device can receive TSOv6
VIRTIO_NET_F_HOST_ECN = 1 << 13         # device can receive TSO with ECN
VIRTIO_NET_F_HOST_UFO = 1 << 14         # device can receive UFO
VIRTIO_NET_F_MRG_RXBUF = 1 << 15        # driver can merge receive buffers
VIRTIO_NET_F_STATUS = 1 << 16           # configuration status field is available
VIRTIO_NET_F_CTRL_VQ = 1 << 17          # control channel is available

# The offloads a tap carries in both directions (virtio 1.2 §5.1.6.2 for
# what the driver sends, §5.1.6.4 for what it receives).  GUEST_UFO is added
# only when the kernel accepts TUN_F_UFO (kvmlite.net.tap).
TAP_OFFLOADS = (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM
                | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6 | VIRTIO_NET_F_GUEST_ECN
                | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6 | VIRTIO_NET_F_HOST_ECN
                | VIRTIO_NET_F_HOST_UFO)

# virtio 1.2 §5.1.6 "Device Operation": struct virtio_net_hdr flags and gso_type
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_F_RSC_INFO = 4
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80


# linux/virtio_net.h: struct virtio_net_hdr_v1 (virtio 1.2 §5.1.6, little-endian)
class virtio_net_hdr_v1(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("flags", ctypes.c_uint8),
        ("gso_type", ctypes.c_uint8),
        ("hdr_len", ctypes.c_uint16),
        ("gso_size", ctypes.c_uint16),
        ("csum_start", ctypes.c_uint16),
        ("csum_offset", ctypes.c_uint16),
        ("num_buffers", ctypes.c_uint16),
    ]


VNET_HDR_LEN = ctypes.sizeof(virtio_net_hdr_v1)
assert VNET_HDR_LEN == 12, "linux/virtio_net.h: struct virtio_net_hdr_v1 is 12 bytes"
