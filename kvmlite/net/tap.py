"""A tap device as a virtio-net backend.

The tap is opened with ``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`` and a 12-byte
virtio-net header (``TUNSETVNETHDRSZ``): every frame read or written carries
``struct virtio_net_hdr_v1`` first, so checksum and segmentation offloads
pass between guest and host kernel untouched (virtio 1.2 §5.1.6).

Two ways to get one:

* create: ``TapBackend(name="tap0")`` or ``TapBackend()`` (the kernel picks
  ``kvmlite0``, ``kvmlite1``...).  The tap gets ``host_ip`` if given (a /24
  unless a prefix is written), is brought up, and then ``script TAPNAME``
  runs if given (like QEMU's ifup script).  It is not persistent: it goes
  when the backend closes.
* attach: ``TapBackend(tapif="tap0")`` opens an existing tap (``ip tuntap
  add dev tap0 mode tap``) and uses it as it is; it stays after close.

Addresses and flags are set with the ``SIOCSIF*`` socket ioctls rather than
by running ``ip``: one system call each, no dependency on iproute2, and the
errors come back as errno values.  ``netns=NAME`` does all of it inside
network namespace ``NAME`` (:mod:`kvmlite.net.netns`); the tap's file
descriptor then works from anywhere.

Facts about the tun driver (drivers/net/tun.c) this relies on:

* a frame is read or written whole by one ``readv``/``writev``; a write
  never blocks and never comes back short;
* once the interface is deleted (``ip link del``) the file stays open but
  ``poll`` reports ``POLLERR`` and reads and writes fail with ``EBADFD``;
* a write while the interface is down fails with ``EIO``, which is not
  the tap being gone: such frames are dropped, as a cable-less NIC drops
  them;
* ``TUNSETOFFLOAD`` refuses (``EINVAL``) TSO without ``TUN_F_CSUM`` and
  ECN without TSO, so :meth:`TapBackend.set_offloads` follows the virtio
  feature dependencies (§5.1.3.1) before asking.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from kvmlite.net import features as f
from kvmlite.net import tuntap
from kvmlite.net.errors import BackendGone, NetError
from kvmlite.net.netns import run_in_netns

TUN_PATH = "/dev/net/tun"
DEFAULT_NAME = "kvmlite%d"
DEFAULT_PREFIX = 24
TAP_FLAGS = tuntap.IFF_TAP | tuntap.IFF_NO_PI | tuntap.IFF_VNET_HDR
IOV_MAX = 1024
SCRIPT_TIMEOUT = 30.0

# errno values that mean the interface behind the file is gone
_GONE = frozenset({errno.EBADFD, errno.ENXIO, errno.ENODEV, errno.EBADF})

# virtio feature accepted by the driver -> TUN_F_* flag (§5.1.3, linux/if_tun.h)
_GUEST_TO_TUN = (
    (f.VIRTIO_NET_F_GUEST_TSO4, tuntap.TUN_F_TSO4),
    (f.VIRTIO_NET_F_GUEST_TSO6, tuntap.TUN_F_TSO6),
)


def parse_host_ip(text: str) -> ipaddress.IPv4Interface:
    """``"192.168.33.1"`` (a /24) or ``"192.168.33.1/16"``."""
    try:
        return ipaddress.IPv4Interface(text if "/" in text else f"{text}/{DEFAULT_PREFIX}")
    except ValueError:
        raise NetError(f"bad host_ip {text!r}: expected an IPv4 address like 192.168.33.1 or 192.168.33.1/24") from None


def tun_offload_flags(negotiated: int, ufo: bool) -> int:
    """The ``TUN_F_*`` flags for the guest-side offloads the driver accepted.

    Without GUEST_CSUM nothing is offloaded (TSO and UFO require it, virtio
    1.2 §5.1.3.1); GUEST_ECN counts only with a TSO; GUEST_UFO only when the
    kernel accepts ``TUN_F_UFO`` (``ufo``).
    """
    if not negotiated & f.VIRTIO_NET_F_GUEST_CSUM:
        return 0
    flags = tuntap.TUN_F_CSUM
    for feature, tun_flag in _GUEST_TO_TUN:
        if negotiated & feature:
            flags |= tun_flag
    if negotiated & f.VIRTIO_NET_F_GUEST_ECN and flags & (tuntap.TUN_F_TSO4 | tuntap.TUN_F_TSO6):
        flags |= tuntap.TUN_F_TSO_ECN
    if negotiated & f.VIRTIO_NET_F_GUEST_UFO and ufo:
        flags |= tuntap.TUN_F_UFO
    return flags


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _open_tun() -> int:
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetError(f"{TUN_PATH} does not exist (modprobe tun)", operation=f"open {TUN_PATH}",
                       errno=errno.ENOENT) from None
    except PermissionError as e:
        raise NetError(f"cannot open {TUN_PATH}: permission denied: CAP_NET_ADMIN is missing "
                       "(taps need root, or CAP_NET_ADMIN and access to the device)",
                       operation=f"open {TUN_PATH}", errno=e.errno) from None
    except OSError as e:
        raise NetError.from_errno(f"open {TUN_PATH}", e.errno or 0) from None


def _set_iff(fd: int, name: str, create: bool) -> str:
    """TUNSETIFF with the errors a user can act on spelled out."""
    try:
        return tuntap.tun_set_iff(fd, name, TAP_FLAGS)
    except NetError as e:
        if e.errno == errno.EPERM and create:
            raise NetError(f"cannot create tap {name}: CAP_NET_ADMIN is missing "
                           "(run kvmlite as root or give it CAP_NET_ADMIN)", operation="TUNSETIFF",
                           errno=e.errno) from None
        if e.errno == errno.EPERM:
            raise NetError(f"cannot attach to tap {name}: CAP_NET_ADMIN is missing and the tap belongs to "
                           f"another user (ip tuntap add dev {name} mode tap user $USER)",
                           operation="TUNSETIFF", errno=e.errno) from None
        if e.errno == errno.EBUSY:
            raise NetError(f"tap {name} is in use by another process", operation="TUNSETIFF",
                           errno=e.errno) from None
        if e.errno == errno.EINVAL and not create:
            raise NetError(f"{name} is not a tap device", operation="TUNSETIFF", errno=e.errno) from None
        raise


class _Opened:
    """What :func:`_open_tap` hands back from the namespace's thread."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name


def _open_tap(name: str, create: bool, host_ip: ipaddress.IPv4Interface | None) -> _Opened:
    """Open (or create) the tap and configure it; runs in the tap's namespace."""
    if create and "%" not in name and _interface_exists(name):
        raise NetError(f"interface {name} already exists (tapif={name} attaches to an existing tap)")
    if not create and not _interface_exists(name):
        raise NetError(f"tap {name} does not exist (ip tuntap add dev {name} mode tap)")
    fd = _open_tun()
    try:
        name = _set_iff(fd, name, create)
        if not create and not tuntap.tun_get_iff(fd)[1] & tuntap.IFF_PERSIST:
            # It vanished between the check and TUNSETIFF, which made a new one.
            raise NetError(f"tap {name} does not exist (ip tuntap add dev {name} mode tap)")
        tuntap.tun_set_vnet_hdr_sz(fd, f.VNET_HDR_LEN)
        if create:
            _configure(name, host_ip)
    except BaseException:
        os.close(fd)
        raise
    return _Opened(fd, name)


def _configure(name: str, host_ip: ipaddress.IPv4Interface | None) -> None:
    """Give the new tap its address and bring it up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            if host_ip is not None:
                tuntap.set_address(sock.fileno(), name, host_ip.ip)
                tuntap.set_netmask(sock.fileno(), name, host_ip.netmask)
            flags = tuntap.get_flags(sock.fileno(), name)
            tuntap.set_flags(sock.fileno(), name, flags | tuntap.IFF_UP)
        except NetError as e:
            if e.errno == errno.EPERM:
                raise NetError(f"cannot configure tap {name}: CAP_NET_ADMIN is missing", operation=e.operation,
                               errno=e.errno) from None
            if e.errno == errno.EEXIST and host_ip is not None:
                raise NetError(f"cannot give tap {name} address {host_ip}: it is already in use",
                               operation=e.operation, errno=e.errno) from None
            raise


def _probe_ufo(fd: int) -> bool:
    """Whether the kernel accepts ``TUN_F_UFO`` (QEMU asks the same way)."""
    try:
        tuntap.tun_set_offload(fd, tuntap.TUN_F_CSUM | tuntap.TUN_F_UFO)
    except NetError:
        return False
    finally:
        tuntap.tun_set_offload(fd, 0)
    return True


def _run_script(script: str, name: str, netns: str | None) -> None:
    """``script TAPNAME`` (in the namespace, if any); one-line error on failure."""
    path = Path(script)
    if not path.is_file():
        raise NetError(f"tap script {script} does not exist")
    if not os.access(path, os.X_OK):
        raise NetError(f"tap script {script} is not executable")
    argv = [str(path.resolve()), name]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=SCRIPT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise NetError(f"tap script {script} {name} did not finish within {SCRIPT_TIMEOUT:.0f} s") from None
    except OSError as e:
        raise NetError(f"tap script {script} {name} could not run: {e.strerror}") from None
    if done.returncode != 0:
        lines = ([line.strip() for line in done.stderr.splitlines() if line.strip()]
                 or [line.strip() for line in done.stdout.splitlines() if line.strip()])
        why = f": {lines[-1]}" if lines else ""     # its last word, stderr's first
        raise NetError(f"tap script {script} {name} failed (exit status {done.returncode}){why}")


class TapBackend:
    """A tap interface carrying frames with a virtio-net header.

    Args:
        name: the tap to create; ``%d`` lets the kernel number it.  Default
            ``kvmlite%d``.
        tapif: attach to this existing tap instead (not with ``name``,
            ``host_ip`` or ``script``); it is left in place on close.
        host_ip: IPv4 address for the host side of a created tap, ``/24``
            unless a prefix is given; none by default.
        script: run ``script TAPNAME`` once the tap is up (QEMU's ifup).
        netns: create or find the tap in this network namespace (``ip
            netns`` name) instead of the caller's.

    Raises :class:`NetError` with a one-line message when the tap cannot be
    had.  Frames flow with :meth:`recv_into` and :meth:`send` from one
    thread at a time; the device's event loop watches :meth:`fileno`.
    """

    vnet_hdr = True
    mtu: int | None = None

    def __init__(self, name: str | None = None, *, tapif: str | None = None, host_ip: str | None = None,
                 script: str | None = None, netns: str | None = None) -> None:
        if tapif is not None and (name is not None or host_ip is not None or script is not None):
            raise NetError("tapif= uses an existing tap as it is: name, host_ip and script do not apply")
        self.created = tapif is None
        self.netns = netns
        self.host_ip = parse_host_ip(host_ip) if host_ip is not None else None
        self.dropped = 0        # frames sent while the interface was down
        requested = tapif if tapif is not None else (name or DEFAULT_NAME)
        opened = run_in_netns(netns, lambda: _open_tap(requested, self.created, self.host_ip))
        self._fd: int | None = opened.fd
        self.name = opened.name
        try:
            self._ufo = _probe_ufo(opened.fd)
            if script is not None:
                _run_script(script, self.name, netns)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        where = f" in netns {self.netns}" if self.netns else ""
        return f"<TapBackend {self.name}{where}{'' if self._fd is not None else ' closed'}>"

    def __enter__(self) -> "TapBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _gone(self, operation: str, err: int) -> BackendGone:
        return BackendGone(f"tap {self.name} is gone: {operation} failed: {os.strerror(err)}",
                           operation=operation, errno=err)

    def fileno(self) -> int:
        if self._fd is None:
            raise self._gone("fileno", errno.EBADF)
        return self._fd

    def recv_into(self, buf: memoryview) -> int:
        """Read one frame, virtio-net header first, into ``buf``; its length.

        Raises ``BlockingIOError`` when none waits and :class:`BackendGone`
        when the interface was deleted.  A frame longer than ``buf`` is cut
        short by the kernel.
        """
        fd = self.fileno()
        while True:
            try:
                return os.readv(fd, [buf])
            except InterruptedError:
                continue
            except BlockingIOError:
                raise
            except OSError as e:
                err = e.errno or 0
            if err in _GONE or not self._attached():
                raise self._gone("read", err)
            # A read that fails on a live tap fails every time: gone too.
            raise BackendGone.from_errno(f"read from tap {self.name}", err)

    def send(self, parts: Sequence[memoryview | bytes]) -> bool:
        """Write one frame (virtio-net header first) gathered from ``parts``.

        True when the kernel took it, or dropped it because the interface
        is down (counted in :attr:`dropped`); False when it cannot take it
        now.  :class:`BackendGone` when the tap was deleted; a plain
        :class:`NetError` (an ``OSError``) when the kernel refused this
        frame (a malformed virtio-net header: ``EINVAL``) and would take
        the next.
        """
        fd = self.fileno()
        if len(parts) > IOV_MAX:
            parts = [b"".join(parts)]
        while True:
            try:
                os.writev(fd, parts)
                return True
            except InterruptedError:
                continue
            except BlockingIOError:
                return False
            except OSError as e:
                return self._send_failed(e.errno or 0)

    def _send_failed(self, err: int) -> bool:
        if err in _GONE:
            raise self._gone("write", err)
        if not self._attached():
            raise self._gone("write", err)
        if err == errno.EIO:            # the interface is down: no carrier, frames go nowhere
            self.dropped += 1
            return True
        raise NetError.from_errno(f"write to tap {self.name}", err)

    def _attached(self) -> bool:
        """Whether the file still has its interface (TUNGETIFF answers)."""
        try:
            tuntap.tun_get_iff(self.fileno())
        except NetError:
            return False
        return True

    def flush(self) -> bool:
        """Nothing to push: a tap takes whole frames or none."""
        return True

    def offloads(self) -> int:
        """The virtio-net offload features a tap carries (see module doc)."""
        return f.TAP_OFFLOADS | (f.VIRTIO_NET_F_GUEST_UFO if self._ufo else 0)

    def set_offloads(self, negotiated: int) -> None:
        """``TUNSETOFFLOAD`` with the guest-side offloads the driver accepted,
        so the kernel hands the guest only what it can take."""
        try:
            tuntap.tun_set_offload(self.fileno(), tun_offload_flags(negotiated, self._ufo))
        except NetError as e:
            if e.errno in _GONE:
                raise self._gone("TUNSETOFFLOAD", e.errno) from None
            raise

    def close(self) -> None:
        """Close the tap; a tap this backend created goes with it (made
        non-persistent first, in case a script made it persistent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self.created:
            try:
                tuntap.tun_set_persist(fd, False)
            except NetError:
                pass
        os.close(fd)
