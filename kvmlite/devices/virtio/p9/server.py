"""The 9P2000.L request dispatcher: one T-message in, one R-message out.

:class:`P9Server` knows nothing of virtio.  A transport hands it the bytes
of one request and gets back the bytes of the reply::

    server = P9Server("/srv/share", readonly=False)
    reply = server.handle(request_bytes, on_reply=publish)   # any thread
    server.reset()                                           # device reset
    server.close()                                           # device gone

Every request gets exactly one reply with the request's tag: the R-message
of its type or Rlerror with an errno.  Nothing a guest sends makes
``handle`` raise: malformed framing answers EPROTO (tag NOTAG when there
is not even a header), an unknown type EOPNOTSUPP, a failing system call
its errno, and an unexpected server fault EIO (logged, rate-limited).

Threads.  ``handle`` may run on several threads at once.  The fid table
has its own lock (:mod:`.fids`); file I/O runs outside it.  ``_state_lock``
guards the negotiated msize and the in-flight table; neither lock is held
while the other is taken, nor across file I/O.

Flush (9P's flush(5)).  Requests are not interrupted: a request already
running finishes.  Tflush(oldtag) waits until every request with that tag
that was in flight when the Tflush arrived has produced its reply and
handed it to its ``on_reply`` callback, then answers Rflush.  A transport
that publishes a reply inside ``on_reply`` therefore always publishes the
flushed request's reply before Rflush, which is the order the 9P client
relies on (older Linux virtio transports drop the request on Rflush).  A
Tflush whose oldtag is not in flight (already answered, or not yet seen)
is answered at once.

Reads in place.  A transport may pass ``handle`` a ``read_into``
callable, ``(fd, count, offset) -> bytes read or None``, that reads a
file's bytes straight to where the reply's data goes (virtio-9p: one
``preadv`` into the guest's buffers after the Rread header).  A Tread of
an open file then calls it instead of reading into a bytes object, and
the reply handed back is the Rread's first 11 bytes alone, its size field
counting the data already in place; None from it means "not here" and the
server reads as usual.

Writes in place, the other way: a ``write_from`` (:class:`WriteSource`)
holds a Twrite's data where the transport has it (the guest's buffers).
``handle`` is then given the Twrite's first 23 bytes alone, its size
field counting the source's ``count`` bytes, and the write is one
``pwritev`` from there (``write_to``); a write to an xattr fid takes the
bytes (``gather``).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import stat
import struct
import threading
from _thread import LockType
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from kvmlite.base.state import Reader, StateError, pack_bytes
from kvmlite.devices.virtio.p9 import codec, locks
from kvmlite.devices.virtio.p9.codec import (Dirent, Message, MessageError, Qid, Rattach, Rclunk, Rflush,
                                             Rfsync, Rgetattr, Rgetlock, Rlcreate, Rlerror, Rlink, Rlock,
                                             Rlopen, Rmkdir, Rmknod, Rread, Rreaddir, Rreadlink, Rremove,
                                             Rrename, Rrenameat, Rsetattr, Rstatfs, Rsymlink, Runlinkat,
                                             Rversion, Rwalk, Rwrite, Rxattrcreate, Rxattrwalk, Tattach,
                                             Tclunk, Tflush, Tfsync, Tgetattr, Tgetlock, Tlcreate, Tlink,
                                             Tlock, Tlopen, Tmkdir, Tmknod, Tread, Treaddir, Treadlink,
                                             Tremove, Trename, Trenameat, Tsetattr, Tstatfs, Tsymlink,
                                             Tunlinkat, Tversion, Twalk, Twrite, Txattrcreate, Txattrwalk)
from kvmlite.devices.virtio.p9.constants import (ATTR_ATIME, ATTR_ATIME_SET, ATTR_GID, ATTR_MODE, ATTR_MTIME,
                                                 ATTR_MTIME_SET, ATTR_SIZE, ATTR_UID, DOTL_AT_REMOVEDIR,
                                                 DOTL_EXCL, DOTL_TRUNC, HEADER_SIZE, IO_HEADER_SIZE, MAXWELEM,
                                                 MIN_MSIZE, NAME_MAX, NOFID, NONUNAME, NOTAG, QT_DIR, QT_FILE,
                                                 QT_SYMLINK, S64_MAX, STATS_BASIC, U32_MAX, U64_MAX, V9FS_MAGIC,
                                                 VERSION_9P2000_L, VERSION_UNKNOWN, XATTR_CREATE, XATTR_REPLACE,
                                                 XATTR_SIZE_MAX)
from kvmlite.devices.virtio.p9.fids import Fid, FidTable, XattrRead, XattrWrite
from kvmlite.devices.virtio.p9.fs import EVERYTHING, Node, Share, View, check_name, fail
from kvmlite.devices.virtio.p9.syscalls import UTIME_NOW
from kvmlite.devices.virtio.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

DEFAULT_MAX_MSIZE = 1 << 20    # what the server offers; Linux's virtio transport asks for up to ~500 KiB
MAX_MSIZE_LIMIT = 16 << 20
MAX_FIDS_LIMIT = 65536
_NS = 1_000_000_000
_DT_DIR, _DT_LNK = 4, 10       # dirent.h d_type values

# Requests that change the share: a read-only share answers them EROFS
# before looking at them.  Two more are refused elsewhere: Tlopen only when
# its flags ask for writing (fs.py), Tremove after clunking its fid.
_MUTATING = (Tlcreate, Twrite, Tsetattr, Tmkdir, Tmknod, Tsymlink, Tlink, Trename, Trenameat, Tunlinkat,
             Txattrcreate)


def default_max_fids() -> int:
    """A quarter of the soft RLIMIT_NOFILE, within 64..65536: the rest of the
    VMM (disks, sockets, other shares) keeps its own descriptors."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_FIDS_LIMIT
    return max(64, min(MAX_FIDS_LIMIT, soft // 4))


def _id(value: int) -> int | None:
    return None if value == U32_MAX else value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value > S64_MAX else value


def _new_encode_dev(rdev: int) -> int:
    """A device number as the kernel's new_encode_dev (linux/kdev_t.h) lays
    it out, which is what the 9P client decodes."""
    major, minor = os.major(rdev), os.minor(rdev)
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


ReadInto = Callable[[int, int, int], "int | None"]     # (fd, count, offset) -> bytes placed, or None
TWRITE_HEAD = HEADER_SIZE + 4 + 8 + 4                  # a Twrite before its data: fid[4] offset[8] count[4]
_TWRITE_FIELDS = struct.Struct("<IQI")


class WriteSource(Protocol):
    """A Twrite's data where the transport holds it (module docstring)."""

    count: int

    def write_to(self, fd: int, offset: int) -> int:
        """pwrite(2) of the data to ``fd`` at ``offset``: the bytes written."""

    def gather(self) -> bytes:
        """The data as bytes."""


@dataclass(frozen=True)
class ReadInPlace(Message):
    """An Rread whose ``count`` bytes of data ``read_into`` put in place."""

    count: int


class P9Server:
    """A 9P2000.L server for one share.

    ``root``: the host directory served; ``readonly``: answer EROFS to every
    change; ``max_msize``: the largest message the server accepts and offers
    in Rversion (at least 4096; the client's smaller msize wins);
    ``max_fids``: how many fids the guest may hold at once (each holds up
    to two host descriptors), by default a quarter of the process's
    descriptor limit; ``view``: what of the tree the guest may see
    (:class:`~kvmlite.devices.virtio.p9.fs.View`; everything by default).
    """

    def __init__(self, root: str | bytes | os.PathLike[str], *, readonly: bool = False,
                 max_msize: int = DEFAULT_MAX_MSIZE, max_fids: int | None = None, view: View = EVERYTHING) -> None:
        if not MIN_MSIZE <= max_msize <= MAX_MSIZE_LIMIT:
            raise ValueError(f"max_msize {max_msize} outside {MIN_MSIZE}..{MAX_MSIZE_LIMIT}")
        self.max_msize = max_msize
        self.max_fids = default_max_fids() if max_fids is None else max_fids
        self._share = Share(root, readonly, view)
        self._fids = FidTable(self.max_fids)
        self._state_lock = threading.Lock()
        self._msize = 0                                    # 0: no Tversion agreed yet
        # Per tag, a lock per request inside handle(), held until it has answered (Tflush waits on it).
        self._inflight: dict[int, list[LockType]] = {}
        self._closed = False
        self._errors = RateLimitedLog(log)
        self._local = threading.local()                    # .read_into during one handle()
        self._handlers: dict[type[Message], Callable[[Any], Message]] = {
            Tversion: self._version, Tattach: self._attach, Tflush: self._flush, Twalk: self._walk,
            Tclunk: self._clunk, Tremove: self._remove, Tlopen: self._lopen, Tlcreate: self._lcreate,
            Tread: self._read, Twrite: self._write, Treaddir: self._readdir, Tgetattr: self._getattr,
            Tsetattr: self._setattr, Tstatfs: self._statfs, Tfsync: self._fsync, Tmkdir: self._mkdir,
            Tmknod: self._mknod, Tsymlink: self._symlink, Tlink: self._link, Treadlink: self._readlink,
            Trename: self._rename, Trenameat: self._renameat, Tunlinkat: self._unlinkat,
            Tlock: self._lock, Tgetlock: self._getlock, Txattrwalk: self._xattrwalk,
            Txattrcreate: self._xattrcreate,
        }

    # ---- the transport's interface -------------------------------------------

    @property
    def msize(self) -> int:
        """The negotiated message size (0 before Tversion)."""
        return self._msize

    @property
    def readonly(self) -> bool:
        return self._share.readonly

    @property
    def fid_count(self) -> int:
        return len(self._fids)

    def handle(self, request: bytes | bytearray | memoryview,
               on_reply: Callable[[bytes], None] | None = None,
               read_into: ReadInto | None = None, write_from: WriteSource | None = None) -> bytes:
        """Serve one T-message (its exact bytes) and return the R-message.
        ``on_reply``, when given, receives the reply before any Tflush
        waiting on this request is answered (see the module docstring);
        ``read_into`` and ``write_from``: see "Reads in place" there."""
        tag, msg, error = self._decode(request) if write_from is None else self._decode_head(request, write_from)
        done = self._begin(tag, msg)
        self._local.read_into = read_into
        try:
            reply = codec.encode(tag, Rlerror(error)) if msg is None else self._run(tag, msg)
            if on_reply is not None:
                on_reply(reply)
            return reply
        finally:
            self._local.read_into = None
            self._end(tag, done)

    def reset(self) -> None:
        """Forget the session (device reset): every fid clunked, msize unset."""
        with self._state_lock:
            self._msize = 0
        self._fids.clear()

    def close(self) -> None:
        """Release every host descriptor.  Call after the transport has
        stopped calling :meth:`handle`; later requests answer EIO."""
        self._closed = True
        self.reset()
        self._share.close()

    # ---- snapshots (docs/9p.md, "Snapshots") -----------------------------------------

    def save_session(self) -> dict:
        """The session as JSON values: the negotiated msize and every fid by
        the names that lead to its file from the root.  Call with no request
        inside :meth:`handle` (the device waits for its workers first)."""
        with self._state_lock:
            msize = self._msize
        return {"msize": msize, "version": VERSION_9P2000_L.decode() if msize else "",
                "fids": [self._save_fid(number, fid) for number, fid in self._fids.items()]}

    def _save_fid(self, number: int, fid: Fid) -> dict:
        node = fid.node
        saved: dict[str, Any] = {
            "fid": number, "path": [os.fsdecode(name) for name in node.path], "uid": fid.uid,
            "type": node.kind, "open": fid.open_flags if fid.open_fd is not None else None,
            # deleted or renamed away on the host, or unlinked through another fid: the path
            # would find nothing, or another file
            "gone": fid.gone or not self._share.names(node), "xattr": None}
        if isinstance(fid.xattr, XattrRead):
            saved["xattr"] = {"read": pack_bytes(fid.xattr.value)}
        elif isinstance(fid.xattr, XattrWrite):
            pending = fid.xattr
            saved["xattr"] = {"name": pack_bytes(pending.name), "size": pending.size, "flags": pending.flags,
                              "value": pack_bytes(pending.value)}
        return saved

    def restore_session(self, state: dict, part: str = "9p") -> None:
        """Load what :meth:`save_session` returned, replacing the session.
        Every field is checked before any file is opened (StateError naming
        ``part``); then each fid's file is found again by its names, walked
        from the root one at a time through Twalk's confined lookup, and an
        open fid opened again with its flags less O_TRUNC.  A fid whose file
        is no longer there, is of another type or cannot be opened again
        becomes a gone fid (every request but Tclunk answers ESTALE)."""
        r = Reader(state, part)
        msize = r.int("msize", 0, self.max_msize)
        version = r.str("version")
        if msize and (msize < MIN_MSIZE or version != VERSION_9P2000_L.decode()):
            raise StateError(f"{part}: msize={msize} version={version!r} is not a 9P2000.L session "
                             f"this server can serve")
        entries = r.list("fids")
        if entries and not msize:
            raise StateError(f"{part}: fids without a Tversion")
        if len(entries) > self.max_fids:
            raise StateError(f"{part}: {len(entries)} fids, more than this server's {self.max_fids}")
        saved = [_SavedFid.read(Reader(entry, f"{part} fids[{i}]")) for i, entry in enumerate(entries)]
        numbers = [s.number for s in saved]
        if len(set(numbers)) != len(numbers):
            raise StateError(f"{part}: a fid number appears twice")
        self.reset()
        fids: dict[int, Fid] = {}
        try:
            for s in saved:
                fids[s.number] = self._restore_fid(s)
        except BaseException:
            for fid in fids.values():
                fid.close()
            raise
        try:
            self._fids.install(fids)            # closes them all when it refuses
        except OSError as exc:
            raise StateError(f"{part}: {exc.strerror}") from None
        with self._state_lock:
            self._msize = msize

    def _restore_fid(self, s: "_SavedFid") -> Fid:
        if not s.gone:
            try:
                node = self._walk_path(s.path)
            except OSError:
                pass
            else:
                fid = Fid(node, s.uid, xattr=s.xattr)
                try:
                    if node.kind != s.kind:
                        raise fail(errno.ESTALE)
                    if s.open is not None:
                        fid.open_fd = self._share.open(node, s.open & ~DOTL_TRUNC)
                        fid.open_flags = s.open
                    return fid
                except OSError:
                    fid.close()
        return Fid(Node(-1, s.path, Qid(0, 0, 0), s.kind, 0), s.uid, gone=True)

    def _walk_path(self, path: tuple[bytes, ...]) -> Node:
        """The node at ``path``, walked from the root one name at a time as
        Twalk walks (checked names, confined lookups, no symlink followed)."""
        node = self._share.root()
        try:
            for name in path:
                step = self._share.lookup(node, name)
                self._share.release(node)
                node = step
        except BaseException:
            self._share.release(node)
            raise
        return node

    # ---- dispatch --------------------------------------------------------------

    def _limit(self) -> int:
        return self._msize or self.max_msize

    def _decode(self, request: bytes | bytearray | memoryview) -> tuple[int, Message | None, int]:
        try:
            view = memoryview(request).cast("B")
            size, _, tag = codec.read_header(view)
            if size > self._limit():
                return tag, None, errno.EPROTO
            tag, msg = codec.decode(view)
        except MessageError as exc:
            return exc.tag, None, exc.errno
        except (TypeError, ValueError):
            return NOTAG, None, errno.EPROTO
        return tag, msg, 0

    def _decode_head(self, request: bytes | bytearray | memoryview,
                     source: WriteSource) -> tuple[int, Message | None, int]:
        """A Twrite's first TWRITE_HEAD bytes whose data is ``source``: the
        Twrite, its ``data`` the source; EPROTO unless the size field, the
        count and the source agree."""
        view = memoryview(request).cast("B")
        if len(view) != TWRITE_HEAD:
            return NOTAG, None, errno.EPROTO
        size, msg_type, tag = struct.unpack_from("<IBH", view)
        fid, offset, count = _TWRITE_FIELDS.unpack_from(view, HEADER_SIZE)
        if msg_type != Twrite.TYPE or count != source.count or size != TWRITE_HEAD + count or size > self._limit():
            return tag, None, errno.EPROTO
        return tag, Twrite(fid, offset, source), 0      # type: ignore[arg-type]

    def _begin(self, tag: int, msg: Message | None) -> LockType | None:
        """Count a request in for Tflush: a lock held until :meth:`_end`
        (a lock rather than an Event: one C call to make, one to let go)."""
        if msg is None or isinstance(msg, (Tflush, Tversion)):
            return None
        done = threading.Lock()
        done.acquire()
        with self._state_lock:
            self._inflight.setdefault(tag, []).append(done)
        return done

    def _end(self, tag: int, done: LockType | None) -> None:
        if done is None:
            return
        with self._state_lock:
            waiting = self._inflight[tag]
            waiting.remove(done)
            if not waiting:
                del self._inflight[tag]
        done.release()

    def _run(self, tag: int, msg: Message) -> bytes:
        try:
            reply = self._call(msg)
        except OSError as exc:
            reply = Rlerror(exc.errno or errno.EIO)
        except (ValueError, OverflowError):
            reply = Rlerror(errno.EINVAL)          # e.g. a NUL inside a name os refused
        except Exception as exc:                   # a server bug: answer, log, carry on
            self._errors.warning(f"9p: {type(msg).__name__} failed: {exc!r}")
            reply = Rlerror(errno.EIO)
        if isinstance(reply, ReadInPlace):          # the data is where the reply goes already
            return codec.encode_read_header(tag, reply.count)
        try:
            out = codec.encode(tag, reply)
        except Exception as exc:
            self._errors.warning(f"9p: cannot encode {reply!r}: {exc!r}")
            out = codec.encode(tag, Rlerror(errno.EIO))
        if len(out) > self._limit():
            out = codec.encode(tag, Rlerror(errno.EMSGSIZE))
        return out

    def _call(self, msg: Message) -> Message:
        if self._closed:
            raise fail(errno.EIO, "server closed")
        handler = self._handlers.get(type(msg))
        if handler is None:
            raise fail(errno.EOPNOTSUPP, f"{type(msg).__name__} is not served")
        if not self._msize and not isinstance(msg, Tversion):
            raise fail(errno.EPROTO, "no Tversion yet")
        if self._share.readonly and isinstance(msg, _MUTATING):
            raise fail(errno.EROFS)
        return handler(msg)

    # ---- session -----------------------------------------------------------------

    def _version(self, m: Tversion) -> Message:
        """Tversion starts a new session: every fid is clunked."""
        self.reset()
        if m.version != VERSION_9P2000_L and not m.version.startswith(VERSION_9P2000_L + b"."):
            return Rversion(min(m.msize, self.max_msize), VERSION_UNKNOWN)
        msize = min(m.msize, self.max_msize)
        if msize < MIN_MSIZE:
            raise fail(errno.EINVAL, f"msize {m.msize} below {MIN_MSIZE}")
        with self._state_lock:
            self._msize = msize
        return Rversion(msize, VERSION_9P2000_L)

    def _attach(self, m: Tattach) -> Message:
        """Every attach starts at the share's root; aname is not used (one
        share per device).  There is no authentication, so afid must be NOFID."""
        if m.afid != NOFID:
            raise fail(errno.EBADF, "no authentication fids")
        node = self._share.root()
        self._fids.add(m.fid, Fid(node, None if m.n_uname == NONUNAME else m.n_uname))
        return Rattach(node.qid)

    def _flush(self, m: Tflush) -> Message:
        with self._state_lock:
            waiting = list(self._inflight.get(m.oldtag, ()))
        for done in waiting:
            with done:          # taken once the request has answered
                pass
        return Rflush()

    def _clunk(self, m: Tclunk) -> Message:
        """The fid is gone whatever the answer; a pending xattr write is set
        here and its failure is the answer."""
        fid = self._fids.take(m.fid)
        try:
            if isinstance(fid.xattr, XattrWrite):
                self._commit_xattr(fid.node, fid.xattr)
        finally:
            self._fids.give_back(fid)
        return Rclunk()

    # ---- walking and opening ---------------------------------------------------

    def _walk(self, m: Twalk) -> Message:
        """Up to MAXWELEM names.  A failure at the first name is the error; a
        later one answers the qids walked so far and leaves newfid unset."""
        if len(m.wnames) > MAXWELEM:
            raise fail(errno.EINVAL, f"{len(m.wnames)} names in one walk")
        with self._fids.use(m.fid) as fid:
            if fid.xattr is not None:
                raise fail(errno.EBADF, "an xattr fid")
            if m.newfid == m.fid and fid.open_fd is not None:
                raise fail(errno.EBUSY, "walking an open fid onto itself")
            if m.newfid != m.fid and m.newfid in self._fids:
                raise fail(errno.EEXIST, f"fid {m.newfid} is in use")
            node = self._share.clone(fid.node)
            qids: list[Qid] = []
            try:
                for i, name in enumerate(m.wnames):
                    try:
                        step = self._share.walk(node, name)
                    except OSError:
                        if i == 0:
                            raise
                        break
                    self._share.release(node)
                    node = step
                    qids.append(node.qid)
            except BaseException:
                self._share.release(node)
                raise
            if len(qids) < len(m.wnames):
                self._share.release(node)
                return Rwalk(tuple(qids))
            new = Fid(node, fid.uid)
            if m.newfid == m.fid:
                self._fids.replace(m.fid, fid, new)
            else:
                self._fids.add(m.newfid, new)
        return Rwalk(tuple(qids))

    def _lopen(self, m: Tlopen) -> Message:
        with self._fids.use(m.fid) as fid:
            if fid.xattr is not None:
                raise fail(errno.EINVAL, "an xattr fid")
            with fid.open_lock:
                if fid.open_fd is not None:
                    raise fail(errno.EINVAL, "already open")
                fid.open_fd = self._share.open(fid.node, m.flags)
                fid.open_flags = m.flags
            return Rlopen(fid.node.qid, 0)

    def _lcreate(self, m: Tlcreate) -> Message:
        """The fid, a directory, becomes the new file, opened."""
        with self._fids.use(m.fid) as fid:
            if fid.xattr is not None or fid.open_fd is not None:
                raise fail(errno.EINVAL, "not an unopened directory fid")
            node, fd = self._share.create(fid.node, m.name, m.flags, m.mode, bool(m.flags & DOTL_EXCL),
                                          fid.uid, _id(m.gid))
            self._fids.replace(m.fid, fid, Fid(node, fid.uid, open_fd=fd, open_flags=m.flags))
            return Rlcreate(node.qid, 0)

    # ---- I/O -----------------------------------------------------------------------

    def _io_count(self, count: int) -> int:
        return min(count, self._limit() - IO_HEADER_SIZE)

    def _read(self, m: Tread) -> Message:
        with self._fids.use(m.fid) as fid:
            count = self._io_count(m.count)
            if isinstance(fid.xattr, XattrRead):
                return Rread(fid.xattr.value[m.offset:m.offset + count])
            if fid.xattr is not None or fid.open_fd is None:
                raise fail(errno.EBADF, "fid not open")
            if m.offset > S64_MAX:
                raise fail(errno.EINVAL)
            read_into = self._local.read_into
            if read_into is not None:
                placed = read_into(fid.open_fd, count, m.offset)
                if placed is not None:
                    return ReadInPlace(placed)
            return Rread(os.pread(fid.open_fd, count, m.offset))

    def _write(self, m: Twrite) -> Message:
        data: bytes | WriteSource = m.data
        with self._fids.use(m.fid) as fid:
            if isinstance(fid.xattr, XattrWrite):
                return Rwrite(self._write_xattr(fid, m.offset, data if isinstance(data, bytes) else data.gather()))
            if fid.xattr is not None or fid.open_fd is None:
                raise fail(errno.EBADF, "fid not open")
            if m.offset > S64_MAX:
                raise fail(errno.EINVAL)
            if not isinstance(data, bytes):                 # in place (module docstring)
                return Rwrite(data.write_to(fid.open_fd, m.offset))
            return Rwrite(os.pwrite(fid.open_fd, data, m.offset))

    def _readdir(self, m: Treaddir) -> Message:
        """Entries from cookie ``offset`` (0 or an entry's offset from an
        earlier reply: getdents64's d_off, which survives across calls)."""
        with self._fids.use(m.fid) as fid:
            if fid.xattr is not None or fid.open_fd is None:
                raise fail(errno.EBADF, "fid not open")
            if not fid.node.is_dir:
                raise fail(errno.ENOTDIR)
            count = self._io_count(m.count)
            with fid.io_lock:
                entries = self._share.read_dir(fid.open_fd, _signed64(m.offset), max(count, 1024), fid.node.path)
            out: list[bytes] = []
            used = 0
            for ino, off, dtype, name in entries:
                size = codec.dirent_size(len(name))
                if used + size > count:
                    break
                out.append(Dirent(self._dirent_qid(fid, ino, dtype, name), off & U64_MAX, dtype, name).encode())
                used += size
            if entries and not out:
                raise fail(errno.EINVAL, f"count {m.count} holds no entry")
            return Rreaddir(b"".join(out))

    def _dirent_qid(self, fid: Fid, ino: int, dtype: int, name: bytes) -> Qid:
        """A listing's qid from the entry alone (no stat per entry).  The
        root's ``..`` is the root itself: nothing above the share shows."""
        if name == b".." and not fid.node.path:
            return fid.node.qid
        qtype = QT_DIR if dtype == _DT_DIR else QT_SYMLINK if dtype == _DT_LNK else QT_FILE
        return Qid(qtype, 0, ino)

    def _fsync(self, m: Tfsync) -> Message:
        with self._fids.use(m.fid) as fid:
            if fid.open_fd is None:
                raise fail(errno.EBADF, "fid not open")
            (os.fdatasync if m.datasync else os.fsync)(fid.open_fd)
            return Rfsync()

    # ---- attributes ----------------------------------------------------------------

    def _getattr(self, m: Tgetattr) -> Message:
        """Every basic field, whatever the mask asked (the client takes what
        ``valid`` says); no birth time, generation or data version."""
        with self._fids.use(m.fid) as fid:
            st = self._share.stat(fid.node)
            return Rgetattr(
                valid=STATS_BASIC, qid=fid.node.qid, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid,
                nlink=st.st_nlink, rdev=_new_encode_dev(st.st_rdev), size=st.st_size, blksize=st.st_blksize,
                blocks=st.st_blocks,
                atime_sec=st.st_atime_ns // _NS & U64_MAX, atime_nsec=st.st_atime_ns % _NS,
                mtime_sec=st.st_mtime_ns // _NS & U64_MAX, mtime_nsec=st.st_mtime_ns % _NS,
                ctime_sec=st.st_ctime_ns // _NS & U64_MAX, ctime_nsec=st.st_ctime_ns % _NS,
                btime_sec=0, btime_nsec=0, gen=0, data_version=0)

    def _setattr(self, m: Tsetattr) -> Message:
        """Owner, then mode, then size, then times (so a truncation does not
        undo an explicit mtime).  Other valid bits (ctime, ...) are ignored."""
        with self._fids.use(m.fid) as fid:
            node, valid = fid.node, m.valid
            if valid & (ATTR_UID | ATTR_GID):
                self._share.chown(node, m.uid if valid & ATTR_UID else None, m.gid if valid & ATTR_GID else None)
            if valid & ATTR_MODE:
                self._share.chmod(node, m.mode)
            if valid & ATTR_SIZE:
                self._share.truncate(node, m.size)
            if valid & (ATTR_ATIME | ATTR_MTIME):
                atime = _time(valid, ATTR_ATIME, ATTR_ATIME_SET, m.atime_sec, m.atime_nsec)
                mtime = _time(valid, ATTR_MTIME, ATTR_MTIME_SET, m.mtime_sec, m.mtime_nsec)
                self._share.utimes(node, atime, mtime)
            return Rsetattr()

    def _statfs(self, m: Tstatfs) -> Message:
        """The host file system's numbers under the 9p magic (the host's own
        file system type is not shown)."""
        with self._fids.use(m.fid) as fid:
            sv = self._share.statfs(fid.node)
            return Rstatfs(type=V9FS_MAGIC, bsize=sv.f_frsize & U32_MAX, blocks=sv.f_blocks, bfree=sv.f_bfree,
                           bavail=sv.f_bavail, files=sv.f_files, ffree=sv.f_ffree, fsid=sv.f_fsid & U64_MAX,
                           namelen=sv.f_namemax & U32_MAX)

    # ---- making, linking, renaming, removing --------------------------------------

    def _mkdir(self, m: Tmkdir) -> Message:
        with self._fids.use(m.dfid) as d:
            return Rmkdir(self._made(self._share.mkdir(d.node, m.name, m.mode, d.uid, _id(m.gid))))

    def _mknod(self, m: Tmknod) -> Message:
        with self._fids.use(m.dfid) as d:
            return Rmknod(self._made(self._share.mknod(d.node, m.name, m.mode, d.uid, _id(m.gid))))

    def _symlink(self, m: Tsymlink) -> Message:
        with self._fids.use(m.fid) as d:
            return Rsymlink(self._made(self._share.symlink(d.node, m.name, m.symtgt, d.uid, _id(m.gid))))

    def _made(self, node: Node) -> Qid:
        self._share.release(node)
        return node.qid

    def _link(self, m: Tlink) -> Message:
        with self._fids.use(m.dfid) as d, self._fids.use(m.fid) as target:
            self._share.link(d.node, m.name, target.node)
            return Rlink()

    def _readlink(self, m: Treadlink) -> Message:
        with self._fids.use(m.fid) as fid:
            return Rreadlink(self._share.readlink(fid.node))

    def _rename(self, m: Trename) -> Message:
        """Rename the fid's file (found again by its recorded path and checked
        to be the same inode) into directory dfid as ``name``."""
        with self._fids.use(m.fid) as fid, self._fids.use(m.dfid) as d:
            old = fid.node.path
            parent, oldname = self._share.locate(fid.node)
            try:
                self._share.rename(parent, oldname, d.node, m.name)
            finally:
                self._share.release(parent)
            self._fids.rename_paths(old, d.node.path + (m.name,))
            return Rrename()

    def _renameat(self, m: Trenameat) -> Message:
        with self._fids.use(m.olddirfid) as olddir, self._fids.use(m.newdirfid) as newdir:
            self._share.rename(olddir.node, m.oldname, newdir.node, m.newname)
            self._fids.rename_paths(olddir.node.path + (m.oldname,), newdir.node.path + (m.newname,))
            return Rrenameat()

    def _unlinkat(self, m: Tunlinkat) -> Message:
        if m.flags & ~DOTL_AT_REMOVEDIR:
            raise fail(errno.EINVAL, f"unlinkat flags {m.flags:#x}")
        with self._fids.use(m.dirfid) as d:
            self._share.unlink(d.node, m.name, bool(m.flags & DOTL_AT_REMOVEDIR))
            return Runlinkat()

    def _remove(self, m: Tremove) -> Message:
        """Remove the fid's file; the fid is clunked even when that fails."""
        fid = self._fids.take(m.fid)
        try:
            if self._share.readonly:
                raise fail(errno.EROFS)
            if fid.gone:
                raise fail(errno.ESTALE)
            parent, name = self._share.locate(fid.node)
            try:
                self._share.unlink(parent, name, fid.node.is_dir)
            finally:
                self._share.release(parent)
        finally:
            self._fids.give_back(fid)
        return Rremove()

    # ---- locks -----------------------------------------------------------------------

    def _lock(self, m: Tlock) -> Message:
        with self._fids.use(m.fid) as fid:
            if fid.open_fd is None:
                raise fail(errno.EBADF, "fid not open")
            return Rlock(locks.set_lock(fid.open_fd, m.type, m.start, m.length))

    def _getlock(self, m: Tgetlock) -> Message:
        with self._fids.use(m.fid) as fid:
            if fid.open_fd is None:
                raise fail(errno.EBADF, "fid not open")
            conflict = locks.test_lock(fid.open_fd, m.type, m.start, m.length)
            if conflict is None:
                return Rgetlock(locks.UNLOCKED, m.start, m.length, m.proc_id, m.client_id)
            lock_type, start, length = conflict
            return Rgetlock(lock_type, start, length, 0, b"")

    # ---- extended attributes ---------------------------------------------------------

    def _xattrwalk(self, m: Txattrwalk) -> Message:
        """newfid reads, with Tread, the value of ``name`` or (name empty)
        the NUL-terminated list of names; only user.* attributes exist."""
        with self._fids.use(m.fid) as fid:
            if fid.xattr is not None:
                raise fail(errno.EBADF, "an xattr fid")
            if m.newfid != m.fid and m.newfid in self._fids:
                raise fail(errno.EEXIST, f"fid {m.newfid} is in use")
            if m.name:
                value = self._share.get_xattr(fid.node, m.name)
            else:
                value = self._share.list_xattrs(fid.node)
            new = Fid(self._share.clone(fid.node), fid.uid, xattr=XattrRead(value))
            if m.newfid == m.fid:
                self._fids.replace(m.fid, fid, new)
            else:
                self._fids.add(m.newfid, new)
            return Rxattrwalk(len(value))

    def _xattrcreate(self, m: Txattrcreate) -> Message:
        """The fid becomes the attribute's writer: Twrite fills the value in
        order, Tclunk sets it (or, for size 0, removes the attribute)."""
        with self._fids.use(m.fid) as fid:
            if fid.xattr is not None or fid.open_fd is not None:
                raise fail(errno.EINVAL, "not an unopened fid")
            if m.attr_size > XATTR_SIZE_MAX:
                raise fail(errno.E2BIG)
            self._share.check_xattr(m.name, m.flags)
            new = Fid(self._share.clone(fid.node), fid.uid, xattr=XattrWrite(m.name, m.attr_size, m.flags))
            self._fids.replace(m.fid, fid, new)
            return Rxattrcreate()

    @staticmethod
    def _write_xattr(fid: Fid, offset: int, data: bytes) -> int:
        pending = fid.xattr
        assert isinstance(pending, XattrWrite)
        with fid.io_lock:
            if offset != len(pending.value):
                raise fail(errno.EINVAL, "xattr values are written in order")
            if offset + len(data) > pending.size:
                raise fail(errno.ERANGE, "more than Txattrcreate announced")
            pending.value += data
        return len(data)

    def _commit_xattr(self, node: Node, pending: XattrWrite) -> None:
        if len(pending.value) != pending.size:
            raise fail(errno.EINVAL, "xattr value shorter than announced")
        if pending.size == 0:
            self._share.remove_xattr(node, pending.name)
        else:
            self._share.set_xattr(node, pending.name, bytes(pending.value), pending.flags)


def _time(valid: int, bit: int, set_bit: int, sec: int, nsec: int) -> tuple[int, int] | None:
    """Tsetattr's time: not asked (None), now, or the given sec/nsec."""
    if not valid & bit:
        return None
    if not valid & set_bit:
        return (0, UTIME_NOW)
    if nsec >= _NS:
        raise fail(errno.EINVAL, "nanoseconds out of range")
    return (_signed64(sec), nsec)


_FILE_TYPES = frozenset((stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO,
                         stat.S_IFSOCK))
_MAX_DEPTH = 2048              # names in a saved path: more than PATH_MAX allows


@dataclass
class _SavedFid:
    """One fid of a saved session, checked (the state file is untrusted)."""

    number: int
    path: tuple[bytes, ...]
    uid: int | None
    kind: int
    open: int | None
    gone: bool
    xattr: XattrRead | XattrWrite | None

    @classmethod
    def read(cls, r: Reader) -> "_SavedFid":
        number = r.int("fid", 0, NOFID - 1)
        names = r.list("path")
        if len(names) > _MAX_DEPTH:
            raise StateError(f"{r.part}: a path of {len(names)} names")
        path = tuple(_name(r.part, name) for name in names)
        uid = _optional_int(r, "uid", NONUNAME - 1)
        kind = r.int("type", 0, 0o170000)
        if kind not in _FILE_TYPES:
            raise StateError(f"{r.part}: type={kind:#o} is not a file type")
        flags = _optional_int(r, "open", U32_MAX)
        xattr = _xattr(r)
        if flags is not None and xattr is not None:
            raise StateError(f"{r.part}: an xattr fid cannot be open")
        return cls(number, path, uid, kind, flags, r.bool("gone"), xattr)


def _name(part: str, name: object) -> bytes:
    """A saved path component: one file name, as Twalk takes it."""
    if not isinstance(name, str):
        raise StateError(f"{part}: path component {name!r} is not a string")
    try:
        return check_name(os.fsencode(name))
    except (OSError, UnicodeError):
        raise StateError(f"{part}: path component {name!r} is not a single file name") from None


def _optional_int(r: Reader, key: str, high: int) -> int | None:
    return None if r.state.get(key, 0) is None else r.int(key, 0, high)


def _xattr(r: Reader) -> XattrRead | XattrWrite | None:
    if r.state.get("xattr", 0) is None:
        return None
    x = r.sub("xattr")
    if "read" in x.state:
        value = x.bytes("read")
        if len(value) > XATTR_SIZE_MAX:
            raise StateError(f"{x.part}: a {len(value)}-byte value")
        return XattrRead(value)
    name, size, flags, value = x.bytes("name"), x.int("size", 0, XATTR_SIZE_MAX), x.int("flags", 0, 3), x.bytes("value")
    if len(value) > size or not name.startswith(b"user.") or b"\0" in name or len(name) > NAME_MAX \
            or flags == XATTR_CREATE | XATTR_REPLACE:
        raise StateError(f"{x.part}: not a pending user.* attribute write")
    return XattrWrite(name, size, flags, bytearray(value))
