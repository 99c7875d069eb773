"""vhost-net: the kernel moves a virtio-net device's frames between the
guest's rings and a tap, with no VMM thread on the data path.

ctypes mirrors of ``linux/vhost.h`` and ``linux/vhost_types.h``, and
:class:`VhostNet`, one thin method per ioctl on ``/dev/vhost-net``.  A
VMM calls them in this order: ``set_owner`` (every other ioctl needs an
owner), ``get_features`` / ``set_features``, ``set_mem_table``, then per
ring ``set_vring_num``, ``set_vring_base``, ``set_vring_addr``,
``set_vring_kick``, ``set_vring_call``, and last ``set_backend`` with the
tap's fd (a tap opened with ``IFF_VNET_HDR``, whose header length matches
the features set).

``-n mode=tap,vhost=1`` opens one per NIC (``kvmlite/vmm/devices.py``);
the virtio-net device drives it (``kvmlite/devices/virtio/net_vhost.py``,
which says who owns which fd when).  The machines kvmlite is developed on
have no ``/dev/vhost-net``: ``tests/unit/net/test_vhost.py`` checks the
numbers and layouts against the headers, and
``tests/nested/test_vhost_net.py`` runs a guest on it in the nested test
host.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence

from kvmlite.net.errors import NetError
from kvmlite.net.ioctl import io, ioctl, ior, iow, iowr

VHOST_NET_PATH = "/dev/vhost-net"
VHOST_VIRTIO = 0xAF
VHOST_FILE_UNBIND = -1                  # linux/vhost.h: set_backend(index, this) detaches

# linux/vhost_types.h
VHOST_VRING_F_LOG = 0
VHOST_PAGE_SIZE = 0x1000
VHOST_F_LOG_ALL = 26
VHOST_NET_F_VIRTIO_NET_HDR = 27


# linux/vhost_types.h: struct vhost_vring_state
class vhost_vring_state(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint), ("num", ctypes.c_uint)]


# linux/vhost_types.h: struct vhost_vring_file
class vhost_vring_file(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint), ("fd", ctypes.c_int)]


# linux/vhost_types.h: struct vhost_vring_addr (addresses are the VMM's, not the guest's)
class vhost_vring_addr(ctypes.Structure):
    _fields_ = [
        ("index", ctypes.c_uint),
        ("flags", ctypes.c_uint),
        ("desc_user_addr", ctypes.c_uint64),
        ("used_user_addr", ctypes.c_uint64),
        ("avail_user_addr", ctypes.c_uint64),
        ("log_guest_addr", ctypes.c_uint64),
    ]


# linux/vhost_types.h: struct vhost_memory_region
class vhost_memory_region(ctypes.Structure):
    _fields_ = [
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
        ("flags_padding", ctypes.c_uint64),
    ]


# linux/vhost_types.h: struct vhost_memory (followed by nregions regions)
class vhost_memory(ctypes.Structure):
    _fields_ = [("nregions", ctypes.c_uint32), ("padding", ctypes.c_uint32)]


EXPECTED_SIZES: dict[type, int] = {
    vhost_vring_state: 8, vhost_vring_file: 8, vhost_vring_addr: 40, vhost_memory_region: 32, vhost_memory: 8,
}


def check_sizes() -> None:
    """Raise AssertionError if a mirror's size differs from the header's."""
    for struct, size in EXPECTED_SIZES.items():
        actual = ctypes.sizeof(struct)
        if actual != size:
            raise AssertionError(f"{struct.__name__}: sizeof is {actual}, linux/vhost_types.h says {size}")


check_sizes()

# linux/vhost.h
VHOST_GET_FEATURES = ior(VHOST_VIRTIO, 0x00, ctypes.c_uint64)
VHOST_SET_FEATURES = iow(VHOST_VIRTIO, 0x00, ctypes.c_uint64)
VHOST_SET_OWNER = io(VHOST_VIRTIO, 0x01)
VHOST_RESET_OWNER = io(VHOST_VIRTIO, 0x02)
VHOST_SET_MEM_TABLE = iow(VHOST_VIRTIO, 0x03, vhost_memory)
VHOST_SET_VRING_NUM = iow(VHOST_VIRTIO, 0x10, vhost_vring_state)
VHOST_SET_VRING_ADDR = iow(VHOST_VIRTIO, 0x11, vhost_vring_addr)
VHOST_SET_VRING_BASE = iow(VHOST_VIRTIO, 0x12, vhost_vring_state)
VHOST_GET_VRING_BASE = iowr(VHOST_VIRTIO, 0x12, vhost_vring_state)
VHOST_SET_VRING_KICK = iow(VHOST_VIRTIO, 0x20, vhost_vring_file)
VHOST_SET_VRING_CALL = iow(VHOST_VIRTIO, 0x21, vhost_vring_file)
VHOST_SET_VRING_ERR = iow(VHOST_VIRTIO, 0x22, vhost_vring_file)
VHOST_NET_SET_BACKEND = iow(VHOST_VIRTIO, 0x30, vhost_vring_file)


def mem_table(regions: Sequence[tuple[int, int, int]]) -> ctypes.Array:
    """``struct vhost_memory`` and its regions, each ``(guest_phys_addr,
    memory_size, userspace_addr)``, as one buffer for VHOST_SET_MEM_TABLE."""
    head = ctypes.sizeof(vhost_memory)
    buf = (ctypes.c_char * (head + len(regions) * ctypes.sizeof(vhost_memory_region)))()
    vhost_memory.from_buffer(buf).nregions = len(regions)
    for i, (gpa, size, uaddr) in enumerate(regions):
        region = vhost_memory_region.from_buffer(buf, head + i * ctypes.sizeof(vhost_memory_region))
        region.guest_phys_addr, region.memory_size, region.userspace_addr = gpa, size, uaddr
    return buf


class VhostNet:
    """An open ``/dev/vhost-net``: one vhost-net device instance.

    Raises :class:`NetError` with a one-line message when the device file
    is missing or cannot be opened.  Each method is one ioctl and raises
    :class:`NetError` named after it on failure.
    """

    def __init__(self, path: str = VHOST_NET_PATH) -> None:
        try:
            self.fd: int | None = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NetError(f"vhost-net is not available: {path} does not exist (modprobe vhost_net)",
                           operation=f"open {path}", errno=errno.ENOENT) from None
        except PermissionError as e:
            raise NetError(f"cannot open {path}: permission denied", operation=f"open {path}",
                           errno=e.errno) from None

    def _fd(self) -> int:
        if self.fd is None:
            raise NetError("vhost-net is closed")
        return self.fd

    def set_owner(self) -> None:
        """VHOST_SET_OWNER: bind the device to this process's memory."""
        ioctl(self._fd(), VHOST_SET_OWNER, "VHOST_SET_OWNER")

    def get_features(self) -> int:
        """VHOST_GET_FEATURES: the virtio (and VHOST_F_*) features offered."""
        value = ctypes.c_uint64()
        ioctl(self._fd(), VHOST_GET_FEATURES, "VHOST_GET_FEATURES", value)
        return value.value

    def set_features(self, features: int) -> None:
        """VHOST_SET_FEATURES: the features the driver accepted."""
        ioctl(self._fd(), VHOST_SET_FEATURES, "VHOST_SET_FEATURES", ctypes.c_uint64(features))

    def set_mem_table(self, regions: Sequence[tuple[int, int, int]]) -> None:
        """VHOST_SET_MEM_TABLE: guest-physical to VMM-virtual mappings,
        ``(guest_phys_addr, memory_size, userspace_addr)`` each."""
        ioctl(self._fd(), VHOST_SET_MEM_TABLE, "VHOST_SET_MEM_TABLE", mem_table(regions))

    def set_vring_num(self, index: int, num: int) -> None:
        """VHOST_SET_VRING_NUM: the ring's size."""
        ioctl(self._fd(), VHOST_SET_VRING_NUM, "VHOST_SET_VRING_NUM", vhost_vring_state(index, num))

    def set_vring_base(self, index: int, base: int) -> None:
        """VHOST_SET_VRING_BASE: the next available index to read."""
        ioctl(self._fd(), VHOST_SET_VRING_BASE, "VHOST_SET_VRING_BASE", vhost_vring_state(index, base))

    def get_vring_base(self, index: int) -> int:
        """VHOST_GET_VRING_BASE: where the kernel stopped (stops the ring)."""
        state = vhost_vring_state(index, 0)
        ioctl(self._fd(), VHOST_GET_VRING_BASE, "VHOST_GET_VRING_BASE", state)
        return state.num

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int, flags: int = 0, log: int = 0) -> None:
        """VHOST_SET_VRING_ADDR: the ring's parts, as VMM virtual addresses."""
        addr = vhost_vring_addr(index, flags, desc, used, avail, log)
        ioctl(self._fd(), VHOST_SET_VRING_ADDR, "VHOST_SET_VRING_ADDR", addr)

    def set_vring_kick(self, index: int, fd: int) -> None:
        """VHOST_SET_VRING_KICK: the eventfd the guest's notifications signal."""
        ioctl(self._fd(), VHOST_SET_VRING_KICK, "VHOST_SET_VRING_KICK", vhost_vring_file(index, fd))

    def set_vring_call(self, index: int, fd: int) -> None:
        """VHOST_SET_VRING_CALL: the eventfd (an irqfd) the kernel signals."""
        ioctl(self._fd(), VHOST_SET_VRING_CALL, "VHOST_SET_VRING_CALL", vhost_vring_file(index, fd))

    def set_vring_err(self, index: int, fd: int) -> None:
        """VHOST_SET_VRING_ERR: the eventfd signalled on a ring error."""
        ioctl(self._fd(), VHOST_SET_VRING_ERR, "VHOST_SET_VRING_ERR", vhost_vring_file(index, fd))

    def set_backend(self, index: int, fd: int) -> None:
        """VHOST_NET_SET_BACKEND: the tap (or packet socket) behind ring
        ``index``; :data:`VHOST_FILE_UNBIND` detaches it."""
        ioctl(self._fd(), VHOST_NET_SET_BACKEND, "VHOST_NET_SET_BACKEND", vhost_vring_file(index, fd))

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
