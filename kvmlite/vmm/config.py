"""A VM's whole configuration, frozen.

The CLI, the Python API and the control socket all build a :class:`VmConfig`
and hand it to :class:`kvmlite.vmm.vm.Vm`; nothing else shapes a VM.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from kvmlite.errors import ConfigError

MiB = 1 << 20
MIN_MEM_MIB = 16
MAX_TIMEOUT = 366 * 86400        # seconds: a VM's lifetime (--timeout) is at most a year
DEFAULT_MEM_MIB = 256
CONSOLES = ("serial", "virtio")
TRANSPORTS = ("pci", "mmio")


@dataclass(frozen=True)
class DiskConfig:
    path: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> "DiskConfig":
        """lkvm syntax: ``PATH[,ro]``."""
        path, *opts = text.split(",")
        if not path:
            raise ConfigError(f"--disk {text!r}: missing image path")
        read_only = False
        for opt in opts:
            if opt == "ro":
                read_only = True
            elif opt:
                raise ConfigError(f"--disk {text!r}: unknown option {opt!r} (only 'ro' is known)")
        return cls(path, read_only)


SHARE_DEFAULT_TAG = "kvm_9p"               # kvmtool's
SHARE_TAG_MAX = 31                         # bytes; devices/virtio/ninep.py's MAX_TAG_LEN
_SHARE_TAG = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ShareConfig:
    """A host directory shared with the guest over virtio-9p (kvmtool's
    ``--9p DIR[,TAG]``, plus ``,ro``)."""

    path: str                           # absolute, symlinks resolved
    tag: str = SHARE_DEFAULT_TAG        # the guest mounts it by this name
    read_only: bool = False
    view_top: tuple[str, ...] | None = None   # read-only shares: only these names at the root...
    view_hidden: tuple[str, ...] = ()         # ...and never these paths (kvmlite sandbox's root)

    @classmethod
    def parse(cls, text: str) -> "ShareConfig":
        """``DIR[,TAG][,ro]``; a tag cannot be called ``ro``, and DIR cannot
        hold a comma.  DIR must be a directory the VMM can read."""
        directory, *options = text.split(",")
        tag: str | None = None
        read_only = False
        for option in options:
            if option == "ro":
                read_only = True
            elif tag is None and not read_only:
                tag = _share_tag(text, option)
            else:
                raise ConfigError(f"--9p {text!r}: unknown option {option!r} after the tag (only 'ro' is known)")
        return cls(_share_dir(text, directory), tag or SHARE_DEFAULT_TAG, read_only)


def _share_tag(text: str, tag: str) -> str:
    if not tag:
        raise ConfigError(f"--9p {text!r}: empty tag (write DIR,TAG or leave the comma out for {SHARE_DEFAULT_TAG})")
    if not _SHARE_TAG.fullmatch(tag) or tag in (".", ".."):   # the guest mounts it at /mnt/TAG
        raise ConfigError(f"--9p {text!r}: tag {tag!r}: use letters, digits, '_', '.' or '-' (not . or ..)")
    if len(tag) > SHARE_TAG_MAX:
        raise ConfigError(f"--9p {text!r}: tag {tag!r} is {len(tag)} bytes, at most {SHARE_TAG_MAX}")
    return tag


def _share_dir(text: str, directory: str) -> str:
    """``directory`` as an absolute real path, once it opened as a readable,
    searchable directory."""
    if not directory:
        raise ConfigError(f"--9p {text!r}: missing directory")
    path = os.path.realpath(directory)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"--9p {text!r}: no such directory {directory!r}") from None
    except NotADirectoryError:
        raise ConfigError(f"--9p {text!r}: {directory!r} is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"--9p {text!r}: cannot read directory {directory!r}: "
                          f"{exc.strerror or exc}") from None
    os.close(fd)
    if not os.access(path, os.X_OK):
        raise ConfigError(f"--9p {text!r}: cannot search directory {directory!r}: Permission denied")
    return path


NET_MODES = ("tap", "user", "none")
NET_DEFAULT_HOST_IP = "192.168.33.1"       # lkvm's defaults for a tap
NET_DEFAULT_GUEST_IP = "192.168.33.15"
_NET_KEYS = ("mode", "tapif", "guest_mac", "host_ip", "guest_ip", "vhost", "script", "trans", "hostfwd")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def _ip(key: str, text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ConfigError(f"-n {key}={text!r}: not an IPv4 address") from None


def _mac(text: str) -> str:
    from kvmlite.net.mac import format_mac, parse_mac

    try:
        return format_mac(parse_mac(text))
    except ConfigError as exc:
        raise ConfigError(f"-n guest_mac: {exc}") from None


def _hostfwd(text: str) -> str:
    from kvmlite.net.errors import NetError
    from kvmlite.net.passt import parse_hostfwd

    try:
        parse_hostfwd(text)
    except NetError as exc:
        raise ConfigError(f"-n hostfwd: {exc}") from None
    return text


@dataclass(frozen=True)
class NetConfig:
    """One virtio-net NIC (lkvm's ``-n/--network``)."""

    mode: str = "tap"
    tapif: str | None = None              # an existing tap, used as is; else kvmlite makes one
    guest_mac: str | None = None          # default: derived from the VM's name and the NIC's index
    host_ip: str = NET_DEFAULT_HOST_IP    # tap: the host side's address
    guest_ip: str = NET_DEFAULT_GUEST_IP  # tap: the guest's static address
    vhost: bool = False                   # tap: the kernel's vhost-net moves the packets
    script: str | None = None             # tap: run as ``SCRIPT TAPNAME`` once the tap exists
    trans: str | None = None              # pci or mmio; default: the VM's --virtio-transport
    hostfwd: tuple[str, ...] = ()         # user: host ports forwarded to the guest (tcp:8080-80)
    implicit: bool = False                # the NIC a VM gets with no -n at all

    @classmethod
    def parse(cls, text: str) -> "NetConfig":
        """``mode=tap|user|none[,tapif=NAME][,guest_mac=MAC][,host_ip=IP][,guest_ip=IP][,vhost=1]
        [,script=PATH][,trans=pci|mmio][,hostfwd=tcp:HOSTPORT-GUESTPORT]...``"""
        values: dict[str, str] = {}
        forwards: list[str] = []
        for item in text.split(","):
            key, sep, value = item.partition("=")
            if not item:
                continue
            if key not in _NET_KEYS:
                raise ConfigError(f"-n {item!r}: unknown key {key!r} (known: {', '.join(_NET_KEYS)})")
            if not sep or not value:
                raise ConfigError(f"-n {key}: missing value (write {key}=VALUE)")
            if key == "hostfwd":
                forwards.append(_hostfwd(value))
            elif key in values:
                raise ConfigError(f"-n {key}: given twice")
            else:
                values[key] = value
        return cls._from_values(values, tuple(forwards))

    @classmethod
    def _from_values(cls, values: dict[str, str], forwards: tuple[str, ...]) -> "NetConfig":
        mode = values.get("mode", "tap")
        if mode not in NET_MODES:
            raise ConfigError(f"-n mode={mode!r}: choose one of {', '.join(NET_MODES)}")
        tapif = values.get("tapif")
        if tapif is not None and not _IFNAME.match(tapif):
            raise ConfigError(f"-n tapif={tapif!r}: an interface name is 1-15 letters, digits, '.', '_' or '-'")
        vhost = values.get("vhost", "0")
        if vhost not in ("0", "1"):
            raise ConfigError(f"-n vhost={vhost!r}: use 1 or 0")
        trans = values.get("trans")
        if trans is not None and trans not in TRANSPORTS:
            raise ConfigError(f"-n trans={trans!r}: choose one of {', '.join(TRANSPORTS)}")
        for key, allowed in (("tapif", "tap"), ("vhost", "tap"), ("script", "tap"), ("host_ip", "tap"),
                             ("guest_ip", "tap")):
            if key in values and mode != allowed:
                raise ConfigError(f"-n {key}: only for mode={allowed}, not mode={mode}")
        if forwards and mode != "user":
            raise ConfigError(f"-n hostfwd: only for mode=user, not mode={mode}")
        return cls(mode=mode, tapif=tapif,
                   guest_mac=_mac(values["guest_mac"]) if "guest_mac" in values else None,
                   host_ip=_ip("host_ip", values.get("host_ip", NET_DEFAULT_HOST_IP)),
                   guest_ip=_ip("guest_ip", values.get("guest_ip", NET_DEFAULT_GUEST_IP)),
                   vhost=vhost == "1", script=values.get("script"), trans=trans, hostfwd=forwards)


VSOCK_MIN_CID = 3                          # 0-2 are the hypervisor, local and host (vsock(7))
VSOCK_MAX_CID = 0xFFFF_FFFE                # 0xFFFFFFFF is VMADDR_CID_ANY
VSOCK_SOCKET_MAX = 107 - len("_4294967295")  # sun_path less the room for a guest port's _PORT suffix
_VSOCK_KEYS = ("socket", "trans")


@dataclass(frozen=True)
class VsockConfig:
    """A virtio-vsock device (lkvm's ``--vsock CID``) with Firecracker's
    hybrid host side: host programs connect to ``socket`` and write
    ``CONNECT <port>\\n``; the guest reaches ``<socket>_<port>``
    (docs/vsock.md)."""

    cid: int                              # the guest's context ID, 3..2**32-2
    socket: str | None = None             # default: vsock.sock in the VM's runtime directory
    trans: str | None = None              # pci or mmio; default: the VM's --virtio-transport

    def __post_init__(self) -> None:
        if isinstance(self.cid, bool) or not isinstance(self.cid, int) \
                or not VSOCK_MIN_CID <= self.cid <= VSOCK_MAX_CID:
            raise ConfigError(f"--vsock {self.cid!r}: a guest CID is a number from {VSOCK_MIN_CID} to "
                              f"{VSOCK_MAX_CID} (0-2 are reserved, {VSOCK_MAX_CID + 1} means any)")
        if self.trans is not None and self.trans not in TRANSPORTS:
            raise ConfigError(f"--vsock trans={self.trans!r}: choose one of {', '.join(TRANSPORTS)}")
        if self.socket is not None:
            if not self.socket:
                raise ConfigError("--vsock socket=: empty path")
            size = len(os.fsencode(self.socket))
            if size > VSOCK_SOCKET_MAX:
                raise ConfigError(f"--vsock socket={self.socket}: {size} bytes is too long for a Unix socket "
                                  f"with a _PORT suffix (at most {VSOCK_SOCKET_MAX})")

    @classmethod
    def parse(cls, text: str) -> "VsockConfig":
        """``CID[,socket=PATH][,trans=pci|mmio]``; a relative PATH is made absolute."""
        cid_text, *items = text.split(",")
        if not re.fullmatch(r"[0-9]+", cid_text):
            raise ConfigError(f"--vsock {text!r}: the guest CID {cid_text!r} is not a number "
                              f"({VSOCK_MIN_CID}..{VSOCK_MAX_CID})")
        values: dict[str, str] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if key not in _VSOCK_KEYS:
                raise ConfigError(f"--vsock {text!r}: unknown key {key!r} (known: {', '.join(_VSOCK_KEYS)})")
            if not sep or not value:
                raise ConfigError(f"--vsock {key}: missing value (write {key}=VALUE)")
            if key in values:
                raise ConfigError(f"--vsock {key}: given twice")
            values[key] = value
        socket = values.get("socket")
        return cls(int(cid_text), os.path.abspath(socket) if socket else None, values.get("trans"))


@dataclass(frozen=True)
class VmConfig:
    kernel: str
    initrd: str | None = None
    params: str = ""                 # appended to the default command line
    mem_mib: int = DEFAULT_MEM_MIB
    cpus: int = 1
    name: str | None = None
    console: str = "serial"
    disks: tuple[DiskConfig, ...] = ()
    rng: bool = False
    virtio_transport: str = "pci"
    hugepages: bool = False
    nics: tuple[NetConfig, ...] = ()
    shares: tuple[ShareConfig, ...] = ()
    vsock: VsockConfig | None = None
    default_cmdline: bool = True     # False: use params as the whole command line
    timeout: float | None = None     # seconds the VM may live; then it is stopped (--timeout)
    labels: tuple[tuple[str, str], ...] = ()   # shown by `kvmlite list`/info (the sandbox SDK's marks)
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.mem_mib < MIN_MEM_MIB:
            raise ConfigError(f"-m {self.mem_mib}: a guest needs at least {MIN_MEM_MIB} MiB")
        if self.cpus < 1:
            raise ConfigError(f"-c {self.cpus}: a guest needs at least one vCPU")
        if self.console not in CONSOLES:
            raise ConfigError(f"--console {self.console!r}: choose one of {', '.join(CONSOLES)}")
        if self.virtio_transport not in TRANSPORTS:
            raise ConfigError(f"--virtio-transport {self.virtio_transport!r}: choose one of "
                              f"{', '.join(TRANSPORTS)}")
        tags = [share.tag for share in self.shares]
        twice = next((tag for tag in tags if tags.count(tag) > 1), None)
        if twice is not None:
            raise ConfigError(f"--9p: tag {twice!r} names two shares (give each its own: --9p DIR,TAG)")
        if self.timeout is not None and not 0 < self.timeout <= MAX_TIMEOUT:
            raise ConfigError(f"--timeout {self.timeout:g}: give a number of seconds from 0 to {MAX_TIMEOUT}")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.name):
            raise ConfigError(f"--name {self.name!r}: use 1-64 letters, digits, '.', '_' or '-'")

    @property
    def mem_bytes(self) -> int:
        return self.mem_mib * MiB


_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_mem_mib(text: str) -> int:
    """``-m`` values: a number of MiB (lkvm), or with a K/M/G/T suffix."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"-m {text!r}: not a size (e.g. 512, 512M, 2G)")
    value, unit = int(m.group(1)), (m.group(2) or "M").upper()
    scaled = value * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    if scaled % MiB:
        raise ConfigError(f"-m {text!r}: memory size must be a whole number of MiB")
    return scaled // MiB
