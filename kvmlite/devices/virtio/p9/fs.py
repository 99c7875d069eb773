"""The confined file system behind one 9P share.

Everything the guest names is resolved beneath the share's root through
directory file descriptors, never by joining strings onto a host path:

* a :class:`Node` is an ``O_PATH | O_NOFOLLOW`` descriptor on one inode
  inside the share, plus the names that led there from the root;
* a lookup takes one name, refused unless it is a plain component (no
  ``/``, no NUL, not ``.`` or ``..``, at most NAME_MAX bytes), and opens it
  relative to its directory's descriptor with ``openat2(RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`` where the kernel has it,
  else ``openat(O_PATH | O_NOFOLLOW)``: one component cannot climb, and a
  trailing symlink is opened as itself, never followed.  A path of several
  names (the parent of a node, for ``..`` and remove/rename by fid) is
  resolved from the root the same way, openat2 checking the whole of it or
  the fallback opening one component at a time;
* creation, removal, renaming and linking are ``*at`` calls on a directory
  descriptor and one checked name, which follow no symlink;
* an operation on a node's own inode (chmod, chown, utimes, truncate,
  xattrs, link, and reopening a regular file for I/O) goes through the
  node's own descriptor as ``/proc/self/fd/N``: the kernel follows that
  magic link to exactly the inode the descriptor holds, not to whatever
  now has its name, so a directory or file swapped for a symlink after the
  walk changes nothing.  (A magic link to an O_PATH descriptor of a symlink
  lands on the symlink itself.)  :class:`Share` checks at start that
  ``/proc`` works this way.

The server never follows a symlink: the guest reads targets with readlink
and resolves them itself, in its own namespace.  Only regular files and
directories are ever opened; device nodes, FIFOs and sockets that the host
put in the share can be looked up and stat'ed but opening them fails with
EPERM, and the guest cannot create them (mknod makes only regular files).

Identity: files are created by the VMM's own uid and gid.  When the VMM
runs as root it hands new files to the guest's uid (the attach's n_uname)
and the gid the request names, and Tsetattr's uid/gid are applied; when it
does not, guest uid/gid are ignored.  Set-user-ID and set-group-ID bits
never reach regular files (a guest's setuid-root binary must not appear in
a host directory); directories keep set-group-ID.  A read-only share
answers EROFS to every change.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Iterable

from kvmlite.devices.virtio.p9 import syscalls
from kvmlite.devices.virtio.p9.codec import Qid
from kvmlite.devices.virtio.p9.constants import (DOTL_ACCMODE, DOTL_APPEND, DOTL_DIRECTORY, DOTL_DSYNC,
                                                 DOTL_NOACCESS, DOTL_RDWR, DOTL_SYNC, DOTL_TRUNC, DOTL_WRONLY,
                                                 NAME_MAX, PATH_MAX, QT_DIR, QT_FILE, QT_SYMLINK, S64_MAX,
                                                 XATTR_CREATE, XATTR_REPLACE)
from kvmlite.errors import KvmliteError

_LOOKUP_RESOLVE = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS
_O_LOOKUP = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_XATTR_NAMESPACE = b"user."
_NO_ID = -1                    # chown(2): leave this id as it is


class ShareError(KvmliteError):
    """A share that cannot be served (missing root, no usable /proc)."""


@dataclass(frozen=True)
class View:
    """What of the share's tree the guest may see (``kvmlite sandbox``
    shares the host's root this way): with ``top`` set, only those names
    exist at the root; every path in ``hidden`` (and all beneath it) does
    not exist.  A hidden name cannot be looked up (ENOENT), is left out of
    directory listings and cannot be created, so the guest never learns of
    it; the check is on the names the server walked, which are the only way
    in (no symlink is ever followed)."""

    top: frozenset[bytes] | None = None
    hidden: frozenset[tuple[bytes, ...]] = frozenset()

    @classmethod
    def of(cls, top: "Iterable[str] | None" = None, hidden: "Iterable[str]" = ()) -> "View":
        """From host-style names: ``top=("usr", "etc")``, ``hidden=("etc/shadow",)``."""
        parts = frozenset(tuple(os.fsencode(p) for p in h.strip("/").split("/")) for h in hidden if h.strip("/"))
        if top is None and not parts:
            return EVERYTHING
        return cls(None if top is None else frozenset(os.fsencode(t) for t in top), parts)

    def hides(self, path: tuple[bytes, ...]) -> bool:
        if not path:
            return False
        if self.top is not None and path[0] not in self.top:
            return True
        return any(path[:n] in self.hidden for n in range(1, len(path) + 1))


EVERYTHING = View()


def fail(code: int, what: str = "") -> OSError:
    return OSError(code, what or os.strerror(code))


def check_name(name: bytes) -> bytes:
    """A single path component from the guest, or EINVAL/ENAMETOOLONG."""
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise fail(errno.EINVAL, f"not a file name: {name!r}")
    if len(name) > NAME_MAX:
        raise fail(errno.ENAMETOOLONG)
    return name


@dataclass
class Node:
    """One inode in the share: an O_PATH descriptor (owned), the names that
    last led to it from the root, its qid and (unchanging) file type."""

    fd: int
    path: tuple[bytes, ...]
    qid: Qid
    kind: int                  # stat.S_IFMT of its mode
    dev: int

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    @property
    def is_regular(self) -> bool:
        return self.kind == stat.S_IFREG

    @property
    def is_symlink(self) -> bool:
        return self.kind == stat.S_IFLNK

    @property
    def proc(self) -> bytes:
        """The magic link that reaches this node's inode and no other."""
        return b"/proc/self/fd/%d" % self.fd


def qid_of(st: os.stat_result) -> Qid:
    """Type from the mode, version 0 (files are told apart by path alone; see
    docs/9p.md), path the inode number."""
    if stat.S_ISDIR(st.st_mode):
        qtype = QT_DIR
    elif stat.S_ISLNK(st.st_mode):
        qtype = QT_SYMLINK
    else:
        qtype = QT_FILE
    return Qid(qtype, 0, st.st_ino)


def host_open_flags(dotl: int) -> int:
    """Host open(2) flags for Tlopen/Tlcreate's P9_DOTL flags: the access mode,
    O_TRUNC, O_APPEND and the sync flags are kept; everything else (O_DIRECT,
    O_NOATIME, O_ASYNC, O_NONBLOCK, O_NOFOLLOW, O_CREAT/O_EXCL, ...) is the
    server's business, not the guest's."""
    access = dotl & DOTL_ACCMODE
    if access == DOTL_NOACCESS:
        raise fail(errno.EINVAL, "open mode 3")
    flags = {0: os.O_RDONLY, DOTL_WRONLY: os.O_WRONLY, DOTL_RDWR: os.O_RDWR}[access]
    for bit, host in ((DOTL_TRUNC, os.O_TRUNC), (DOTL_APPEND, os.O_APPEND), (DOTL_DSYNC, os.O_DSYNC),
                      (DOTL_SYNC, os.O_SYNC)):
        if dotl & bit == bit:
            flags |= host
    return flags | os.O_CLOEXEC | os.O_NOCTTY


def _writes(flags: int) -> bool:
    return (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)


def _id(value: int | None) -> int:
    return _NO_ID if value is None else value


class Share:
    """A host directory served to a guest.

    Thread safety: every method may be called from several threads at once;
    the only shared state is the root descriptor, which lives as long as the
    share.  Nodes belong to their caller, who releases them.
    """

    def __init__(self, root: str | bytes | os.PathLike[str], readonly: bool = False, view: View = EVERYTHING) -> None:
        if view is not EVERYTHING and not readonly:
            raise ValueError("a view (hidden paths) is for read-only shares: a guest could create a hidden name")
        self.readonly = readonly
        self.view = view
        self.owner_passthrough = os.geteuid() == 0
        try:
            self._root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ShareError(f"9p share {os.fsdecode(root)}: {exc.strerror}") from None
        try:
            st = os.stat(self._root_fd)
            self._check_proc(st)
            self._use_openat2 = syscalls.have_openat2()
        except BaseException:
            os.close(self._root_fd)
            raise
        self.root_qid = qid_of(st)
        self._root_dev = st.st_dev

    def _check_proc(self, st: os.stat_result) -> None:
        try:
            through = os.stat(b"/proc/self/fd/%d" % self._root_fd)
        except OSError:
            through = None
        if through is None or (through.st_dev, through.st_ino) != (st.st_dev, st.st_ino):
            raise ShareError("9p shares need /proc (the server reaches files through /proc/self/fd)")

    @property
    def uses_openat2(self) -> bool:
        return self._use_openat2

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    # ---- nodes -------------------------------------------------------------

    def _node(self, fd: int, path: tuple[bytes, ...]) -> Node:
        """A Node owning ``fd``; the fd is closed if it cannot be stat'ed."""
        try:
            st = os.stat(fd)
        except BaseException:
            os.close(fd)
            raise
        return Node(fd, path, qid_of(st), stat.S_IFMT(st.st_mode), st.st_dev)

    def root(self) -> Node:
        return self._node(os.dup(self._root_fd), ())

    def clone(self, node: Node) -> Node:
        return Node(os.dup(node.fd), node.path, node.qid, node.kind, node.dev)

    @staticmethod
    def release(node: Node) -> None:
        if node.fd >= 0:
            os.close(node.fd)
            node.fd = -1

    def is_root(self, node: Node) -> bool:
        return not node.path

    def _lookup_fd(self, dirfd: int, name: bytes) -> int:
        if self._use_openat2:
            return syscalls.openat2(dirfd, name, os.O_PATH | os.O_NOFOLLOW, _LOOKUP_RESOLVE)
        return os.open(name, _O_LOOKUP, dir_fd=dirfd)

    def lookup(self, parent: Node, name: bytes) -> Node:
        """The entry ``name`` of directory ``parent`` (a symlink as itself)."""
        check_name(name)
        if not parent.is_dir:
            raise fail(errno.ENOTDIR)
        self.check_visible(parent.path + (name,))
        return self._node(self._lookup_fd(parent.fd, name), parent.path + (name,))

    def walk(self, parent: Node, name: bytes) -> Node:
        """One Twalk step: a name, or ``..`` (the parent by recorded path; the
        root's ``..`` is the root, as in 9P)."""
        if name != b"..":
            return self.lookup(parent, name)
        if not parent.is_dir:
            raise fail(errno.ENOTDIR)
        node = self.resolve(parent.path[:-1])
        if not node.is_dir:                    # the recorded parent's name now holds something else
            self.release(node)
            raise fail(errno.ENOENT)
        return node

    def resolve(self, path: tuple[bytes, ...]) -> Node:
        """The node at ``path`` (checked names) beneath the root; no symlink
        is followed on the way."""
        if not path:
            return self.root()
        for name in path:
            check_name(name)
        self.check_visible(path)
        if self._use_openat2:
            fd = syscalls.openat2(self._root_fd, b"/".join(path), os.O_PATH | os.O_NOFOLLOW, _LOOKUP_RESOLVE)
            return self._node(fd, path)
        fd = os.dup(self._root_fd)
        try:
            for name in path:
                nxt = os.open(name, _O_LOOKUP, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return self._node(fd, path)

    def names(self, node: Node) -> bool:
        """Whether ``node.path`` still leads to ``node``'s own inode (not
        removed, renamed or replaced behind the server's back): a snapshot
        records a node by its path."""
        try:
            found = self.resolve(node.path)
        except OSError:
            return False
        try:
            return (found.dev, found.qid.path) == (node.dev, node.qid.path)
        finally:
            self.release(found)

    def check_visible(self, path: tuple[bytes, ...]) -> None:
        """ENOENT for a path the share's view hides."""
        if self.view.hides(path):
            raise fail(errno.ENOENT)

    def locate(self, node: Node) -> tuple[Node, bytes]:
        """The directory holding ``node`` and its name there, for remove and
        rename by fid; ESTALE when its recorded path now names another inode,
        EBUSY for the root."""
        if not node.path:
            raise fail(errno.EBUSY, "the share's root")
        parent = self.resolve(node.path[:-1])
        try:
            st = os.stat(node.path[-1], dir_fd=parent.fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) != (node.dev, node.qid.path):
                raise fail(errno.ESTALE)
        except BaseException:
            self.release(parent)
            raise
        return parent, node.path[-1]

    def stat(self, node: Node) -> os.stat_result:
        return os.stat(node.fd)

    # ---- opening -----------------------------------------------------------

    def _check_writable(self) -> None:
        if self.readonly:
            raise fail(errno.EROFS)

    def open(self, node: Node, dotl_flags: int) -> int:
        """A descriptor for I/O on a regular file or directory (Tlopen)."""
        flags = host_open_flags(dotl_flags)
        if _writes(flags):
            self._check_writable()
        if node.is_dir:
            if _writes(flags):
                raise fail(errno.EISDIR)
            return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=node.fd)
        if dotl_flags & DOTL_DIRECTORY:
            raise fail(errno.ENOTDIR)
        if node.is_symlink:
            raise fail(errno.ELOOP)
        if not node.is_regular:
            raise fail(errno.EPERM, "special files are not opened")
        return os.open(node.proc, flags)

    # ---- creation ----------------------------------------------------------

    def create(self, parent: Node, name: bytes, dotl_flags: int, mode: int, exclusive: bool,
               uid: int | None, gid: int | None) -> tuple[Node, int]:
        """Tlcreate: a new regular file, opened; (node, fd).  Without
        ``exclusive`` an existing regular file is opened instead."""
        self._check_writable()
        check_name(name)
        if not parent.is_dir:
            raise fail(errno.ENOTDIR)
        flags = host_open_flags(dotl_flags)
        try:
            fd = os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o777, dir_fd=parent.fd)
        except FileExistsError:
            if exclusive:
                raise
            node = self.lookup(parent, name)
            try:
                return node, self.open(node, dotl_flags)
            except BaseException:
                self.release(node)
                raise
        try:
            os.fchmod(fd, file_mode(stat.S_IFREG, mode))
            if self.owner_passthrough:
                os.fchown(fd, _id(uid), _id(gid))
            node = self._node(os.open(b"/proc/self/fd/%d" % fd, os.O_PATH | os.O_CLOEXEC), parent.path + (name,))
        except BaseException:
            os.close(fd)
            raise
        return node, fd

    def _created(self, parent: Node, name: bytes, kind: int, uid: int | None, gid: int | None) -> Node:
        """The node just made at ``name``, handed to (uid, gid) when the VMM
        runs as root; EEXIST if something of another kind took the name."""
        node = self.lookup(parent, name)
        try:
            if node.kind != kind:
                raise fail(errno.EEXIST)
            if self.owner_passthrough:
                os.chown(node.proc, _id(uid), _id(gid))
        except BaseException:
            self.release(node)
            raise
        return node

    def mkdir(self, parent: Node, name: bytes, mode: int, uid: int | None, gid: int | None) -> Node:
        self._check_writable()
        check_name(name)
        os.mkdir(name, mode & 0o777, dir_fd=parent.fd)
        node = self._created(parent, name, stat.S_IFDIR, uid, gid)
        try:
            os.chmod(node.proc, file_mode(stat.S_IFDIR, mode))
        except BaseException:
            self.release(node)
            raise
        return node

    def mknod(self, parent: Node, name: bytes, mode: int, uid: int | None, gid: int | None) -> Node:
        """Only regular files (type 0 or S_IFREG); device nodes, FIFOs and
        sockets are refused with EPERM."""
        self._check_writable()
        check_name(name)
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise fail(errno.EPERM, "only regular files can be made")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o777,
                     dir_fd=parent.fd)
        try:
            os.fchmod(fd, file_mode(stat.S_IFREG, mode))
        finally:
            os.close(fd)
        return self._created(parent, name, stat.S_IFREG, uid, gid)

    def symlink(self, parent: Node, name: bytes, target: bytes, uid: int | None, gid: int | None) -> Node:
        """A symlink whose target is stored as given and never followed here."""
        self._check_writable()
        check_name(name)
        if not target:
            raise fail(errno.ENOENT)
        if b"\0" in target:
            raise fail(errno.EINVAL)
        if len(target) >= PATH_MAX:
            raise fail(errno.ENAMETOOLONG)
        os.symlink(target, name, dir_fd=parent.fd)
        return self._created(parent, name, stat.S_IFLNK, uid, gid)

    def link(self, parent: Node, name: bytes, target: Node) -> None:
        """A hard link to exactly ``target``'s inode."""
        self._check_writable()
        check_name(name)
        if target.is_dir:
            raise fail(errno.EPERM)
        os.link(target.proc, name, dst_dir_fd=parent.fd, follow_symlinks=True)

    def readlink(self, node: Node) -> bytes:
        if not node.is_symlink:
            raise fail(errno.EINVAL)
        return os.readlink(b"", dir_fd=node.fd)

    # ---- removal and renaming ----------------------------------------------

    def rename(self, olddir: Node, oldname: bytes, newdir: Node, newname: bytes) -> None:
        self._check_writable()
        check_name(oldname)
        check_name(newname)
        os.rename(oldname, newname, src_dir_fd=olddir.fd, dst_dir_fd=newdir.fd)

    def unlink(self, parent: Node, name: bytes, directory: bool) -> None:
        self._check_writable()
        check_name(name)
        if directory:
            os.rmdir(name, dir_fd=parent.fd)
        else:
            os.unlink(name, dir_fd=parent.fd)

    # ---- attributes --------------------------------------------------------

    def chmod(self, node: Node, mode: int) -> None:
        self._check_writable()
        if node.is_symlink:
            raise fail(errno.EOPNOTSUPP)
        os.chmod(node.proc, file_mode(node.kind, mode))

    def chown(self, node: Node, uid: int | None, gid: int | None) -> None:
        """Applied only when the VMM runs as root; otherwise ignored."""
        self._check_writable()
        if self.owner_passthrough and (uid is not None or gid is not None):
            os.chown(node.proc, _id(uid), _id(gid))

    def truncate(self, node: Node, size: int) -> None:
        self._check_writable()
        if node.is_dir:
            raise fail(errno.EISDIR)
        if not node.is_regular:
            raise fail(errno.EINVAL)
        if size > S64_MAX:
            raise fail(errno.EFBIG)
        os.truncate(node.proc, size)

    def utimes(self, node: Node, atime: tuple[int, int] | None, mtime: tuple[int, int] | None) -> None:
        self._check_writable()
        syscalls.utimensat(node.proc, atime, mtime)

    def statfs(self, node: Node) -> os.statvfs_result:
        return os.fstatvfs(node.fd)

    # ---- extended attributes: the user.* namespace only ----------------------

    def get_xattr(self, node: Node, name: bytes) -> bytes:
        """A user.* attribute's value; any other namespace has none (ENODATA)."""
        if not name.startswith(_XATTR_NAMESPACE) or b"\0" in name:
            raise fail(errno.ENODATA)
        return os.getxattr(node.proc, name)

    def list_xattrs(self, node: Node) -> bytes:
        """The user.* names, each NUL-terminated, as listxattr(2) gives them."""
        names = (os.fsencode(n) for n in os.listxattr(node.proc))
        return b"".join(n + b"\0" for n in names if n.startswith(_XATTR_NAMESPACE))

    def check_xattr(self, name: bytes, flags: int) -> None:
        """Whether ``name`` may be set with ``flags`` (before the value comes)."""
        self._check_writable()
        if not name.startswith(_XATTR_NAMESPACE) or b"\0" in name:
            raise fail(errno.EOPNOTSUPP, "only user.* attributes are served")
        if len(name) > NAME_MAX:
            raise fail(errno.ERANGE)
        if flags & ~(XATTR_CREATE | XATTR_REPLACE) or flags == XATTR_CREATE | XATTR_REPLACE:
            raise fail(errno.EINVAL, f"xattr flags {flags:#x}")

    def set_xattr(self, node: Node, name: bytes, value: bytes, flags: int) -> None:
        self.check_xattr(name, flags)
        host = (os.XATTR_CREATE if flags & XATTR_CREATE else 0) | (os.XATTR_REPLACE if flags & XATTR_REPLACE else 0)
        os.setxattr(node.proc, name, value, host)

    def remove_xattr(self, node: Node, name: bytes) -> None:
        self.check_xattr(name, 0)
        os.removexattr(node.proc, name)

    # ---- directories -------------------------------------------------------

    def read_dir(self, fd: int, cookie: int, size: int,
                 path: tuple[bytes, ...] = ()) -> list[tuple[int, int, int, bytes]]:
        """The entries of open directory ``fd`` (at ``path``) from ``cookie``
        (0, or a d_off an earlier read returned), about ``size`` bytes of
        them: (d_ino, d_off, d_type, name), less what the view hides.  The
        caller serialises reads of one fd."""
        if cookie > S64_MAX:
            raise fail(errno.EINVAL)
        os.lseek(fd, cookie, os.SEEK_SET)
        entries = syscalls.getdents64(fd, size)
        if self.view is EVERYTHING:
            return entries
        return [e for e in entries if e[3] in (b".", b"..") or not self.view.hides(path + (e[3],))]


def file_mode(kind: int, mode: int) -> int:
    """The permission bits a guest may set: 0o7777 less set-user-ID and
    set-group-ID on anything but a directory."""
    bits = mode & 0o7777
    if kind != stat.S_IFDIR:
        bits &= ~(stat.S_ISUID | stat.S_ISGID)
    return bits
