"""Named instances: who is running, under which name, at which socket.

Every running VMM owns two files in the per-user runtime directory
(:func:`kvmlite.paths.runtime_dir`, created mode 0700)::

    NAME.sock   its control socket (mode 0600)
    NAME.lock   holds its pid; the VMM keeps an exclusive flock(2) on it
    NAME.d/     its other runtime files, made when needed (mode 0700): the
                vsock socket vsock.sock (docs/vsock.md)

The lock is what tells a live VMM from a dead one: the kernel drops it when
the process dies, however it dies (SIGKILL included).  So an entry whose
lock can be taken is stale, and whoever takes it (``kvmlite list``, a
client, the next VMM with that name) removes both files.  A socket without
a lock file (left by hand, or by another tool) is judged by ``connect``:
refused means stale.

Races: a probe holds the lock for a few microseconds, so a VMM that finds
the lock taken retries for :data:`CLAIM_RETRY_S` before it calls the name
in use.  Whoever holds the lock re-checks that the path still names the
file it locked (a cleaner may have unlinked it meanwhile) before trusting it.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import re
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvmlite.errors import KvmliteError, UsageError
from kvmlite.paths import runtime_dir

SOCKET_SUFFIX = ".sock"
LOCK_SUFFIX = ".lock"
VM_DIR_SUFFIX = ".d"               # no NAME.sock or NAME.lock ends so: no name's files collide
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SUN_PATH_MAX = 107                 # sizeof(sockaddr_un.sun_path) - 1 on Linux
CLAIM_RETRY_S = 1.0
DIR_MODE = 0o700
SOCKET_MODE = 0o600


class Liveness(enum.Enum):
    LIVE = "live"
    STALE = "stale"
    ABSENT = "absent"


def check_name(name: str) -> str:
    """``name`` if it is a valid instance name, else a UsageError."""
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"--name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         f"starting with a letter or digit")
    return name


def generated_name(pid: int | None = None) -> str:
    return f"guest-{os.getpid() if pid is None else pid}"


@dataclass
class Claim:
    """A name held by this process: the locked lock file, and the socket path."""

    name: str
    socket_path: Path
    lock_path: Path
    lock_fd: int
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def release(self) -> None:
        """Remove the socket and lock file, then drop the lock (idempotent, any thread)."""
        with self._mutex:
            if self.lock_fd < 0:
                return
            for path in (self.socket_path, self.lock_path):
                _unlink(path)
            os.close(self.lock_fd)
            self.lock_fd = -1


class Registry:
    """The instances in one runtime directory (default: :func:`runtime_dir`)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else runtime_dir()

    def socket_path(self, name: str) -> Path:
        return self.directory / f"{check_name(name)}{SOCKET_SUFFIX}"

    def lock_path(self, name: str) -> Path:
        return self.directory / f"{check_name(name)}{LOCK_SUFFIX}"

    def vm_dir(self, name: str) -> Path:
        """The directory of ``name``'s other runtime files (``NAME.d``)."""
        return self.directory / f"{check_name(name)}{VM_DIR_SUFFIX}"

    # --- the directory ---

    def ensure_directory(self) -> Path:
        """Create the directory (0700) or check an existing one is ours and private."""
        try:
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise KvmliteError(f"cannot create the runtime directory {self.directory}: {exc.strerror}") from None
        self.check_directory()
        return self.directory

    def check_directory(self) -> None:
        """Refuse a directory that is a symlink or not ours; make ours private."""
        try:
            st = os.lstat(self.directory)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise KvmliteError(f"runtime directory {self.directory} is not a directory")
        if st.st_uid != os.geteuid():
            raise KvmliteError(f"runtime directory {self.directory} belongs to uid {st.st_uid}, not to you "
                               f"(uid {os.geteuid()}); refusing to use it")
        if st.st_mode & 0o077:
            os.chmod(self.directory, DIR_MODE)

    def ensure_vm_dir(self, name: str) -> Path:
        """Create ``name``'s directory (0700), or check an existing one is a
        directory of ours (not a symlink) and make it private."""
        self.ensure_directory()
        path = self.vm_dir(name)
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise KvmliteError(f"{path} is not a directory of yours; refusing to use it") from None
            if st.st_mode & 0o077:
                os.chmod(path, DIR_MODE)
        except OSError as exc:
            raise KvmliteError(f"cannot create {path}: {exc.strerror}") from None
        return path

    # --- the VMM's side ---

    def claim(self, name: str) -> Claim:
        """Take ``name`` for this process; KvmliteError if a live VMM has it."""
        self.ensure_directory()
        sock, lock = self.socket_path(name), self.lock_path(name)
        claim = Claim(name, sock, lock, self._take_lock(name, lock))
        if os.path.lexists(sock) and _connects(sock):
            _unlink(lock)             # a server that keeps no lock file (not kvmlite's)
            os.close(claim.lock_fd)
            raise KvmliteError(f"{sock} is in use by another process; choose another --name")
        os.ftruncate(claim.lock_fd, 0)
        os.write(claim.lock_fd, f"{os.getpid()}\n".encode())
        _unlink(sock)                 # stale: its owner no longer holds the lock
        try:
            _check_sun_path(sock)
        except KvmliteError:
            claim.release()
            raise
        return claim

    def _take_lock(self, name: str, lock: Path) -> int:
        """The locked fd of ``lock``, retrying while a prober holds it briefly."""
        deadline = time.monotonic() + CLAIM_RETRY_S
        while (fd := self._lock_current(lock)) is None:
            if time.monotonic() >= deadline:
                pid = read_pid(lock)
                raise KvmliteError(f"a VM named {name!r} is already running"
                                   f"{f' (pid {pid})' if pid else ''}; choose another --name")
            time.sleep(0.02)
        return fd

    def _lock_current(self, lock: Path) -> int | None:
        """An fd holding the exclusive lock on the file now at ``lock``, or None if taken."""
        for _ in range(10):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            if _same_file(fd, lock):
                return fd
            os.close(fd)              # a cleaner unlinked it under us; lock the new one
        return None

    # --- everyone's side ---

    def names(self) -> list[str]:
        """Names with a socket or a lock file here, sorted (live or not)."""
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KvmliteError(f"cannot read the runtime directory {self.directory}: {exc.strerror}") from None
        names = set()
        for entry in entries:
            for suffix in (SOCKET_SUFFIX, LOCK_SUFFIX):
                if entry.endswith(suffix) and NAME_RE.fullmatch(entry[:-len(suffix)]):
                    names.add(entry[:-len(suffix)])
        return sorted(names)

    def probe(self, name: str, *, clean: bool = True) -> Liveness:
        """Whether a live VMM owns ``name``; a stale entry is removed if ``clean``."""
        sock, lock = self.socket_path(name), self.lock_path(name)
        if lock.exists():
            return self._probe_lock(name, sock, lock, clean)
        if not os.path.lexists(sock):
            return Liveness.ABSENT
        if _connects(sock):
            return Liveness.LIVE
        if clean:
            _unlink(sock)
        return Liveness.STALE

    def _probe_lock(self, name: str, sock: Path, lock: Path, clean: bool) -> Liveness:
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:                 # removed since we looked
            return Liveness.ABSENT if not os.path.lexists(sock) else self.probe(name, clean=clean)
        except OSError as exc:
            raise KvmliteError(f"cannot open {lock}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return Liveness.LIVE
        try:
            if os.path.lexists(sock) and _connects(sock):
                return Liveness.LIVE          # listening without holding the lock: not ours to judge
            if clean and _same_file(fd, lock):
                _unlink(sock)
                _unlink(lock)
        finally:
            os.close(fd)
        return Liveness.STALE

    def check_socket_owner(self, name: str) -> Path:
        """The socket path if it exists, is a socket and is ours; else KvmliteError."""
        self.check_directory()
        sock = self.socket_path(name)
        try:
            st = os.lstat(sock)
        except FileNotFoundError:
            raise NoSuchVm(name) from None
        if not stat.S_ISSOCK(st.st_mode):
            raise KvmliteError(f"{sock} is not a socket; refusing to use it")
        if st.st_uid != os.geteuid():
            raise KvmliteError(f"the control socket {sock} belongs to uid {st.st_uid}, not to you "
                               f"(uid {os.geteuid()}); refusing to talk to it")
        return sock


class NoSuchVm(KvmliteError):
    def __init__(self, name: str, stale: bool = False) -> None:
        extra = " (removed the stale control socket of a VMM that died)" if stale else ""
        super().__init__(f"no VM named {name!r} is running{extra}; see 'kvmlite list'")
        self.name = name


def read_pid(lock: Path) -> int | None:
    try:
        text = lock.read_text()[:32].strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            return True      # EAGAIN (backlog full), timeout: someone is there
        return True


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _check_sun_path(path: Path) -> None:
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise KvmliteError(f"control socket path {path} is too long for a Unix socket ({size} bytes, at most "
                           f"{SUN_PATH_MAX}); point XDG_RUNTIME_DIR at a shorter directory")
