"""The kernel interface of tap devices: ctypes mirrors of ``linux/if_tun.h``,
``linux/if.h`` and ``linux/sockios.h``, and one thin function per ioctl.

Every number names its header; ``tests/unit/net/test_headers.py`` compiles
a C program against the machine's headers and checks each one.  Failures
raise :class:`~kvmlite.net.errors.NetError` carrying the ioctl's name and
errno; what a failure means to the user (``EPERM`` is a missing
``CAP_NET_ADMIN``) is decided above, in :mod:`kvmlite.net.tap`.
"""

from __future__ import annotations

import ctypes
import ipaddress

from kvmlite.net.errors import NetError
from kvmlite.net.ioctl import ioctl, ior, iow

_T = ord("T")
_int = ctypes.c_int
_uint = ctypes.c_uint

# linux/if_tun.h: ioctls on a /dev/net/tun file
TUNSETIFF = iow(_T, 202, _int)
TUNSETPERSIST = iow(_T, 203, _int)
TUNGETFEATURES = ior(_T, 207, _uint)
TUNSETOFFLOAD = iow(_T, 208, _uint)
TUNGETIFF = ior(_T, 210, _uint)
TUNGETVNETHDRSZ = ior(_T, 215, _int)
TUNSETVNETHDRSZ = iow(_T, 216, _int)
TUNSETVNETLE = iow(_T, 220, _int)

# linux/if_tun.h: TUNSETIFF ifr_flags
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000
IFF_MULTI_QUEUE = 0x0100
IFF_PERSIST = 0x0800            # read-only, reported by TUNGETIFF

# linux/if_tun.h: TUNSETOFFLOAD flags ("features for GSO")
TUN_F_CSUM = 0x01               # you can hand me unchecksummed packets
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10

# linux/if.h
IFNAMSIZ = 16
IFF_UP = 0x1                    # enum net_device_flags
IFF_RUNNING = 0x40

# linux/sockios.h: ioctls on any socket, naming the interface in struct ifreq
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCGIFINDEX = 0x8933

# linux/socket.h, linux/in.h
AF_INET = 2


# linux/in.h: struct sockaddr_in (port and address are big-endian bytes)
class sockaddr_in(ctypes.Structure):
    _fields_ = [
        ("sin_family", ctypes.c_uint16),
        ("sin_port", ctypes.c_uint8 * 2),
        ("sin_addr", ctypes.c_uint8 * 4),
        ("pad", ctypes.c_uint8 * 8),
    ]


# linux/if.h: struct ifmap
class ifmap(ctypes.Structure):
    _fields_ = [
        ("mem_start", ctypes.c_ulong),
        ("mem_end", ctypes.c_ulong),
        ("base_addr", ctypes.c_ushort),
        ("irq", ctypes.c_ubyte),
        ("dma", ctypes.c_ubyte),
        ("port", ctypes.c_ubyte),
    ]


# linux/if.h: the ifr_ifru union of struct ifreq
class _ifr_ifru(ctypes.Union):
    _fields_ = [
        ("ifru_addr", sockaddr_in),
        ("ifru_flags", ctypes.c_short),
        ("ifru_ivalue", ctypes.c_int),
        ("ifru_mtu", ctypes.c_int),
        ("ifru_map", ifmap),
        ("ifru_data", ctypes.c_void_p),
    ]


# linux/if.h: struct ifreq
class ifreq(ctypes.Structure):
    _anonymous_ = ("ifr_ifru",)
    _fields_ = [("ifr_name", ctypes.c_char * IFNAMSIZ), ("ifr_ifru", _ifr_ifru)]


EXPECTED_SIZES: dict[type, int] = {sockaddr_in: 16, ifmap: 24, ifreq: 40}


def check_sizes() -> None:
    """Raise AssertionError if a mirror's size differs from its header's."""
    for struct, size in EXPECTED_SIZES.items():
        actual = ctypes.sizeof(struct)
        if actual != size:
            raise AssertionError(f"{struct.__name__}: sizeof is {actual}, the header says {size}")


check_sizes()


def make_ifreq(name: str) -> ifreq:
    """A zeroed ``struct ifreq`` naming interface ``name`` (``%d`` allowed)."""
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or any(c <= 32 for c in raw):
        raise NetError(f"bad interface name {name!r}: 1 to {IFNAMSIZ - 1} characters, no '/' or spaces")
    req = ifreq()
    req.ifr_name = raw
    return req


# --- /dev/net/tun ioctls ---

def tun_set_iff(fd: int, name: str, flags: int) -> str:
    """``TUNSETIFF``: create (or attach to) tap/tun ``name``; returns the
    name the kernel chose (``name`` may hold ``%d``)."""
    req = make_ifreq(name)
    req.ifru_flags = flags
    ioctl(fd, TUNSETIFF, "TUNSETIFF", req)
    return req.ifr_name.decode()


def tun_get_iff(fd: int) -> tuple[str, int]:
    """``TUNGETIFF``: the interface's name and its ``IFF_*`` flags."""
    req = ifreq()
    ioctl(fd, TUNGETIFF, "TUNGETIFF", req)
    return req.ifr_name.decode(), req.ifru_flags & 0xFFFF


def tun_get_features(fd: int) -> int:
    """``TUNGETFEATURES``: the ``IFF_*`` flags this kernel's TUNSETIFF accepts."""
    value = ctypes.c_uint()
    ioctl(fd, TUNGETFEATURES, "TUNGETFEATURES", value)
    return value.value


def tun_set_vnet_hdr_sz(fd: int, size: int) -> None:
    """``TUNSETVNETHDRSZ``: the length of the virtio-net header on each frame."""
    ioctl(fd, TUNSETVNETHDRSZ, "TUNSETVNETHDRSZ", ctypes.c_int(size))


def tun_get_vnet_hdr_sz(fd: int) -> int:
    """``TUNGETVNETHDRSZ``."""
    value = ctypes.c_int()
    ioctl(fd, TUNGETVNETHDRSZ, "TUNGETVNETHDRSZ", value)
    return value.value


def tun_set_offload(fd: int, flags: int) -> None:
    """``TUNSETOFFLOAD``: the ``TUN_F_*`` offloads the reader of this fd
    handles (the argument is passed by value)."""
    ioctl(fd, TUNSETOFFLOAD, "TUNSETOFFLOAD", flags)


def tun_set_persist(fd: int, persist: bool) -> None:
    """``TUNSETPERSIST``: keep the interface when its last fd closes."""
    ioctl(fd, TUNSETPERSIST, "TUNSETPERSIST", int(persist))


# --- socket ioctls on an interface (any AF_INET socket of its namespace) ---

def get_flags(sock_fd: int, name: str) -> int:
    """``SIOCGIFFLAGS``."""
    req = make_ifreq(name)
    ioctl(sock_fd, SIOCGIFFLAGS, "SIOCGIFFLAGS", req)
    return req.ifru_flags & 0xFFFF


def set_flags(sock_fd: int, name: str, flags: int) -> None:
    """``SIOCSIFFLAGS``."""
    req = make_ifreq(name)
    req.ifru_flags = flags          # a c_short: ctypes keeps the low 16 bits
    ioctl(sock_fd, SIOCSIFFLAGS, "SIOCSIFFLAGS", req)


def _set_inet(sock_fd: int, name: str, request: int, request_name: str, addr: ipaddress.IPv4Address) -> None:
    req = make_ifreq(name)
    req.ifru_addr.sin_family = AF_INET
    req.ifru_addr.sin_addr[:] = list(addr.packed)
    ioctl(sock_fd, request, request_name, req)


def set_address(sock_fd: int, name: str, addr: ipaddress.IPv4Address) -> None:
    """``SIOCSIFADDR``: the interface's IPv4 address."""
    _set_inet(sock_fd, name, SIOCSIFADDR, "SIOCSIFADDR", addr)


def set_netmask(sock_fd: int, name: str, mask: ipaddress.IPv4Address) -> None:
    """``SIOCSIFNETMASK``: its netmask (set after the address)."""
    _set_inet(sock_fd, name, SIOCSIFNETMASK, "SIOCSIFNETMASK", mask)


def get_mtu(sock_fd: int, name: str) -> int:
    """``SIOCGIFMTU``."""
    req = make_ifreq(name)
    ioctl(sock_fd, SIOCGIFMTU, "SIOCGIFMTU", req)
    return req.ifru_mtu
