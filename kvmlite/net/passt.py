"""passt as a virtio-net backend: user-mode networking without privileges
on the host's network.

passt (https://passt.top, Debian package ``passt``) gives the guest the
addresses of the host's interface with the default route, answers its
DHCP, ARP and NDP, and carries its TCP, UDP and ICMP through ordinary
host sockets.  kvmlite talks to it over a Unix stream socket with QEMU's
``-netdev stream`` framing (:mod:`kvmlite.net.stream`): bare Ethernet
frames, so no virtio-net header and no offloads; passt offers the guest a
65520-byte MTU instead.

How it is started (``argv`` keeps the exact list)::

    [ip netns exec NETNS] passt -f -e -q -1 -s DIR/passt.socket -P DIR/passt.pid
        -m MTU [--runas UID:GID] [-t SPEC]... [-u SPEC]...

* ``-f`` foreground (kvmlite owns the process), ``-e`` errors to stderr as
  well as syslog, which goes to ``DIR/passt.log`` and gives the one-line
  error when passt refuses to start, ``-q`` quiet, ``-1`` serve one client
  and exit when it leaves, so a VMM that dies takes passt with it.
* ``DIR`` is a fresh directory ``kvmlite-passt-XXXXXXXX`` under ``rundir``
  (default: the system's temporary directory, ``/tmp``).  passt started as
  root drops to ``nobody``, and binds its socket and writes its pid file
  without ``CAP_DAC_OVERRIDE``, so as root ``DIR`` is given to ``nobody``
  (and ``--runas`` names the same user, so the two agree), and every
  directory above it must let ``nobody`` through (a one-line error names
  the one that does not: a private ``$TMPDIR`` is the usual culprit).  The socket is
  unlinked once kvmlite is connected; :meth:`PasstBackend.close` ends
  passt and removes ``DIR``, and so does a backend collected or still open
  at interpreter exit: nothing is left behind.  Only a VMM killed outright
  leaves ``DIR`` (pid file and log); passt itself exits then, as its one
  client is gone.
* ``hostfwd`` rules become ``-t``/``-u``: ``tcp:HOSTPORT-GUESTPORT`` is
  ``-t HOSTPORT:GUESTPORT``, ``tcp:ADDR:HOSTPORT-GUESTPORT`` binds only
  ``ADDR`` (``-t ADDR/HOSTPORT:GUESTPORT``), and QEMU's spelling
  ``tcp::2222-:22`` is accepted too.  passt always forwards to the guest's
  own address, so a guest address in a rule is refused.
* passt refuses to start without an interface that has a default route
  ("No external routable interface for IPv4"); ``netns=NAME`` runs it in
  network namespace ``NAME`` (``ip netns exec``), whose interfaces it then
  uses.  It cannot start in a chroot (it makes a user namespace).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmlite.net.errors import BackendGone, NetError
from kvmlite.net.netns import netns_path
from kvmlite.net.stream import FramedStream

DEFAULT_MTU = 65520             # passt's own default: the largest 802.3 MTU, in 32-bit words
START_TIMEOUT = 5.0
EXIT_TIMEOUT = 1.0              # for passt -1 to notice its client left
TERM_TIMEOUT = 2.0
SOCKET_NAME = "passt.socket"
PID_NAME = "passt.pid"
LOG_NAME = "passt.log"
RUNAS_USER = "nobody"
SUN_PATH_MAX = 108              # sys/un.h: sizeof(sockaddr_un.sun_path), with its NUL

# PROTO:[[HOSTADDR]:]HOSTPORT-[[GUESTADDR]:]GUESTPORT
_HOSTFWD = re.compile(r"^(tcp|udp):(?:([0-9.]*):)?(\d+)-(?:([0-9.]*):)?(\d+)$")


@dataclass(frozen=True)
class HostForward:
    """One forwarded port: ``proto`` on the host's ``host_port`` (on
    ``host_addr`` only, if set) reaches the guest's ``guest_port``."""
    proto: str
    host_port: int
    guest_port: int
    host_addr: str | None = None

    def passt_args(self) -> list[str]:
        """``-t [ADDR/]HOSTPORT:GUESTPORT`` (``-u`` for UDP)."""
        where = f"{self.host_addr}/" if self.host_addr else ""
        return ["-t" if self.proto == "tcp" else "-u", f"{where}{self.host_port}:{self.guest_port}"]


def parse_hostfwd(rule: str) -> HostForward:
    """Parse ``tcp:8080-80``, ``udp:127.0.0.1:5353-53`` or QEMU's
    ``tcp::2222-:22``; one-line :class:`NetError` on anything else."""
    usage = f"bad hostfwd rule {rule!r}: expected tcp:HOSTPORT-GUESTPORT or udp:[HOSTADDR:]HOSTPORT-GUESTPORT"
    m = _HOSTFWD.match(rule.strip())
    if not m:
        raise NetError(usage)
    proto, host_addr, host_port, guest_addr, guest_port = m.groups()
    if guest_addr:
        raise NetError(f"bad hostfwd rule {rule!r}: passt forwards to the guest's own address, "
                       "leave the guest address out")
    if host_addr:
        try:
            ipaddress.IPv4Address(host_addr)
        except ValueError:
            raise NetError(f"{usage} (bad address {host_addr!r})") from None
    ports = int(host_port), int(guest_port)
    if not all(1 <= p <= 65535 for p in ports):
        raise NetError(f"{usage} (ports are 1 to 65535)")
    return HostForward(proto, ports[0], ports[1], host_addr or None)


def find_passt(binary: str = "passt") -> str:
    """The passt executable's path; one-line error when it is missing."""
    path = shutil.which(binary)
    if path is None:
        raise NetError("passt is not installed: apt-get install passt", operation="start passt")
    return path


def _runas() -> tuple[int, int] | None:
    """The user passt runs as when started by root (it refuses to stay root)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(RUNAS_USER)
    except KeyError:
        raise NetError(f"user {RUNAS_USER} does not exist: passt needs an unprivileged user to run as") from None
    return entry.pw_uid, entry.pw_gid


def _unreachable(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory from ``/`` down to ``path`` that user ``uid``
    (group ``gid``, no others) may not search, or None.  Mode bits only
    (path_resolution(7)); ACLs are not read."""
    for where in [*reversed(path.parents), path]:
        try:
            st = os.stat(where)
        except OSError:
            return None         # whoever uses it reports that
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return where
    return None


#: what passt prints once its socket is bound: how to start QEMU, not why it failed
_BANNER = ("UNIX domain socket bound", "You can now start qemu", "or qrap, for earlier qemu versions")
_NOISE = ("Failed to send", "Don't run as root", *_BANNER)


def _last_words(log: Path, count: int = 3) -> str:
    """passt's last few meaningful lines of output, joined with ``; ``
    (its complaints about a missing syslog and the banner it prints once
    its socket is bound, with its indented example commands, skipped)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith(_NOISE) and not line[0].isspace()]
    words = "; ".join(lines[-count:])
    if "routable interface for IPv4" in words:      # the IPv6 one alone is no failure
        words += " (passt needs an interface with a default route)"
    return words


class PasstBackend:
    """A passt process and the connection to it.

    Args:
        hostfwd: port forwarding rules (see the module doc).
        netns: run passt in this network namespace (``ip netns`` name).
        rundir: where passt's directory is made (default ``/tmp``); as root
            it must be traversable by ``nobody``.
        mtu: the MTU passt offers the guest by DHCP/NDP, and :attr:`mtu`.
        binary: the passt executable to run.
        timeout: seconds to wait for passt's socket.

    Raises :class:`NetError` with a one-line message when passt is missing
    or does not start; then nothing is left behind.
    """

    vnet_hdr = False

    def __init__(self, *, hostfwd: Sequence[str] = (), netns: str | None = None, rundir: str | Path | None = None,
                 mtu: int = DEFAULT_MTU, binary: str = "passt", timeout: float = START_TIMEOUT) -> None:
        self.forwards = [parse_hostfwd(rule) for rule in hostfwd]
        self.netns = netns
        self.mtu: int | None = mtu
        self.pid: int | None = None
        self._stream: FramedStream | None = None
        passt = find_passt(binary)
        if netns is not None:
            netns_path(netns)
            if shutil.which("ip") is None:
                raise NetError("ip (iproute2) is not installed: apt-get install iproute2")
        runas = _runas()
        try:
            self.dir = Path(tempfile.mkdtemp(prefix="kvmlite-passt-", dir=rundir))
        except OSError as e:
            raise NetError(f"cannot make passt's directory in {rundir or tempfile.gettempdir()}: {e.strerror}",
                           operation="start passt", errno=e.errno) from None
        # What close() releases, also at interpreter exit if close() was never called.
        self._owned = _Owned(self.dir)
        self._release = weakref.finalize(self, self._owned.release)
        try:
            if len(bytes(self.socket_path)) >= SUN_PATH_MAX:
                raise NetError(f"passt's socket path {self.socket_path} is too long for a Unix socket: "
                               "choose a shorter rundir")
            if runas is not None:
                os.chown(self.dir, *runas)
                blocked = _unreachable(self.dir, *runas)
                if blocked is not None:
                    raise NetError(f"passt runs as {RUNAS_USER}, who may not enter {blocked}: choose a rundir "
                                   f"(or $TMPDIR) {RUNAS_USER} can reach", operation="start passt")
            self.argv = self._argv(passt, runas)
            self._start(timeout)
        except BaseException:
            self.close()
            raise

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The passt process (its pid is passt's: ``ip netns exec`` execs)."""
        return self._owned.proc if self._release.alive else None

    @property
    def socket_path(self) -> Path:
        return self.dir / SOCKET_NAME

    @property
    def pid_path(self) -> Path:
        return self.dir / PID_NAME

    @property
    def log_path(self) -> Path:
        return self.dir / LOG_NAME

    def _argv(self, passt: str, runas: tuple[int, int] | None) -> list[str]:
        argv = [passt, "-f", "-e", "-q", "-1", "-s", str(self.socket_path), "-P", str(self.pid_path),
                "-m", str(self.mtu)]
        if runas is not None:
            argv += ["--runas", f"{runas[0]}:{runas[1]}"]
        for forward in self.forwards:
            argv += forward.passt_args()
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def _start(self, timeout: float) -> None:
        """Start passt and connect to its socket once it is listening."""
        with open(self.log_path, "wb") as log:
            self._owned.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        sock = self._owned.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        while True:
            status = self.proc.poll()
            if status is not None:
                why = _last_words(self.log_path) or "no message"
                raise NetError(f"passt exited at start (status {status}): {why}", operation="start passt")
            try:
                sock.connect(str(self.socket_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            if time.monotonic() > deadline:
                raise NetError(f"passt did not open its socket within {timeout:g} s", operation="start passt")
            time.sleep(0.01)
        sock.setblocking(False)
        self.socket_path.unlink(missing_ok=True)     # -1: nobody else may connect anyway
        self._stream = FramedStream(sock, "passt")
        self.pid = self._wait_pid(deadline)

    def _wait_pid(self, deadline: float) -> int:
        """The pid passt writes to its pid file, just after it listens."""
        assert self.proc is not None
        while True:
            try:
                text = self.pid_path.read_text().strip()
                if text:
                    return int(text)
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return self.proc.pid
            time.sleep(0.005)

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<PasstBackend pid {pid}{' in netns ' + self.netns if self.netns else ''}>"

    def __enter__(self) -> "PasstBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- NetBackend ---

    def _live(self) -> FramedStream:
        if self._stream is None:
            raise BackendGone("passt is gone: the backend is closed", operation="closed")
        return self._stream

    def _why_gone(self, e: BackendGone) -> BackendGone:
        status = self.proc.poll() if self.proc else None
        if status is None:
            return e
        return BackendGone(f"passt exited (status {status}): {e}", operation=e.operation, errno=e.errno)

    def fileno(self) -> int:
        return self._live().sock.fileno()

    def recv_into(self, buf: memoryview) -> int:
        """One whole Ethernet frame into ``buf`` (see FramedStream.recv_into)."""
        try:
            return self._live().recv_into(buf)
        except BackendGone as e:
            raise self._why_gone(e) from None

    def send(self, parts: Sequence[memoryview | bytes]) -> bool:
        """One Ethernet frame gathered from ``parts`` (see FramedStream.send)."""
        try:
            return self._live().send(parts)
        except BackendGone as e:
            raise self._why_gone(e) from None

    def flush(self) -> bool:
        try:
            return self._live().flush()
        except BackendGone as e:
            raise self._why_gone(e) from None

    def offloads(self) -> int:
        """None: the stream carries no virtio-net header."""
        return 0

    def set_offloads(self, negotiated: int) -> None:
        """Nothing to tell passt."""

    @property
    def dropped(self) -> int:
        return self._stream.dropped if self._stream else 0

    def close(self) -> None:
        """Disconnect, end passt (it leaves by itself once its one client
        has gone; SIGTERM, then SIGKILL, if not) and remove its directory.
        Also done at interpreter exit for a backend never closed."""
        self._stream = None
        self._release()


class _Owned:
    """What a PasstBackend must give back: its socket, process and directory.
    Kept apart from the backend so a ``weakref.finalize`` can hold it."""

    def __init__(self, where: Path) -> None:
        self.dir = where
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None

    def release(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.proc is not None:
            _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Wait for ``proc`` a moment, then SIGTERM it, then SIGKILL it."""
    for sig, wait in ((None, EXIT_TIMEOUT), (signal.SIGTERM, TERM_TIMEOUT), (signal.SIGKILL, None)):
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
