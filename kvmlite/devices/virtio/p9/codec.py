"""9P2000.L messages on the wire: little-endian encoding and strict decoding.

Every message is ``size[4] type[1] tag[2]`` followed by its fields
(Linux ``net/9p/protocol.c``; the layouts are those of its format strings in
``net/9p/client.c``).  Field kinds: ``b``/``w``/``d``/``q`` unsigned 8, 16, 32
and 64 bits; ``s`` a string, ``len[2]`` then that many bytes; ``Q`` a qid,
``type[1] version[4] path[8]``; data, ``count[4]`` then that many bytes; a
name list, ``n[2]`` then n strings; a qid list, ``n[2]`` then n qids.

Strings stay :class:`bytes`: a file name on Linux is bytes, not text, and
nothing here or in the server needs to decode one.

Decoding trusts nothing.  The size field must equal the buffer's length,
every field must lie inside it, every byte must be consumed, and a count
may not promise more items than the bytes left could hold; each failure
raises :class:`MessageError` carrying the errno the server answers with
(``EPROTO`` for broken framing, ``EOPNOTSUPP`` for an unknown type) and the
tag when the header was long enough to hold one.
"""

from __future__ import annotations

import collections
import errno
import struct
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar, cast

from kvmlite.devices.virtio.p9.constants import HEADER_SIZE, IO_HEADER_SIZE, NOTAG, MsgType

_HEADER = struct.Struct("<IBH")
_QID = struct.Struct("<BIQ")
_U8, _U16, _U32, _U64 = (struct.Struct(f) for f in ("<B", "<H", "<I", "<Q"))
_DIRENT_FIXED = _QID.size + 8 + 1 + 2   # qid, offset[8], type[1], name's len[2]


class MessageError(ValueError):
    """A message that cannot be decoded.  ``errno`` is what the server answers
    with in Rlerror; ``tag`` is the request's tag, or NOTAG when the header
    itself is missing."""

    def __init__(self, message: str, code: int = errno.EPROTO, tag: int = NOTAG) -> None:
        super().__init__(message)
        self.errno = code
        self.tag = tag


@dataclass(frozen=True)
class Qid:
    """A server's identity for a file: type (QT_*), version, path (unique)."""

    type: int = 0
    version: int = 0
    path: int = 0


# ---- field kinds ----------------------------------------------------------

class _Wire:
    """A message field's kind on the wire, as its class body declares it."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind


def _wire(kind: str) -> Any:
    return _Wire(kind)


def u8() -> Any:
    return _wire("b")


def u16() -> Any:
    return _wire("w")


def u32() -> Any:
    return _wire("d")


def u64() -> Any:
    return _wire("q")


def string() -> Any:
    return _wire("s")


def qid() -> Any:
    return _wire("Q")


def data() -> Any:
    return _wire("D")


def names() -> Any:
    return _wire("S")


def qids() -> Any:
    return _wire("R")


class Reader:
    """Bounds-checked little-endian reads from one message's bytes."""

    def __init__(self, buf: memoryview, pos: int, tag: int) -> None:
        self._buf = buf
        self._pos = pos
        self._tag = tag

    @property
    def remaining(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, n: int, what: str) -> memoryview:
        if n > self.remaining:
            raise MessageError(f"{what} overruns the message: {n} bytes wanted, {self.remaining} left",
                               tag=self._tag)
        view = self._buf[self._pos:self._pos + n]
        self._pos += n
        return view

    def _unpack(self, st: struct.Struct, what: str) -> Any:
        return st.unpack(self._take(st.size, what))[0]

    def read(self, kind: str) -> Any:
        if kind == "b":
            return self._unpack(_U8, "u8")
        if kind == "w":
            return self._unpack(_U16, "u16")
        if kind == "d":
            return self._unpack(_U32, "u32")
        if kind == "q":
            return self._unpack(_U64, "u64")
        if kind == "s":
            return bytes(self._take(self._unpack(_U16, "string length"), "string"))
        if kind == "Q":
            return Qid(*_QID.unpack(self._take(_QID.size, "qid")))
        if kind == "D":
            return bytes(self._take(self._unpack(_U32, "data count"), "data"))
        if kind == "S":
            return tuple(self.read("s") for _ in range(self._count(2)))
        if kind == "R":
            return tuple(self.read("Q") for _ in range(self._count(_QID.size)))
        raise AssertionError(f"unknown field kind {kind!r}")

    def _count(self, min_item: int) -> int:
        count = self._unpack(_U16, "item count")
        if count * min_item > self.remaining:
            raise MessageError(f"{count} items cannot fit in the {self.remaining} bytes left", tag=self._tag)
        return int(count)


def _write(out: list[bytes], kind: str, value: Any) -> None:
    if kind == "b":
        out.append(_U8.pack(value))
    elif kind == "w":
        out.append(_U16.pack(value))
    elif kind == "d":
        out.append(_U32.pack(value))
    elif kind == "q":
        out.append(_U64.pack(value))
    elif kind == "s":
        out.append(_U16.pack(len(value)))
        out.append(bytes(value))
    elif kind == "Q":
        out.append(_QID.pack(value.type, value.version, value.path))
    elif kind == "D":
        out.append(_U32.pack(len(value)))
        out.append(value)
    elif kind in ("S", "R"):
        out.append(_U16.pack(len(value)))
        for item in value:
            _write(out, "s" if kind == "S" else "Q", item)
    else:
        raise AssertionError(f"unknown field kind {kind!r}")


# ---- messages --------------------------------------------------------------

class Message:
    """Base of every message class; ``TYPE`` is its MsgType and ``FIELDS`` its
    (name, kind) pairs in wire order, filled in by :func:`_message`."""

    __slots__ = ()
    TYPE: ClassVar[MsgType]
    FIELDS: ClassVar[tuple[tuple[str, str], ...]]


M = TypeVar("M", bound=type[Message])
MESSAGES: dict[int, type[Message]] = {}


def _same_message(self: tuple, other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)      # type: ignore[arg-type]


def _message(msg_type: MsgType) -> Callable[[M], M]:
    """The message class its body declares (fields in wire order, each a
    kind from ``u32()``, ``string()``...), made an immutable named tuple:
    built per request in half the time of a frozen dataclass, and quicker
    to define (a VMM with a share defines sixty at its start).  Two
    messages are equal only when of the same type; one is true even
    without fields."""
    def register(cls: M) -> M:
        spec = {name: value.kind for name, value in vars(cls).items() if isinstance(value, _Wire)}
        base = collections.namedtuple(cls.__name__, tuple(spec), module=cls.__module__)   # type: ignore[misc]
        made = type(cls.__name__, (base, Message), {
            "__slots__": (), "__doc__": cls.__doc__, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "TYPE": msg_type, "FIELDS": tuple(spec.items()), "__eq__": _same_message,
            "__ne__": lambda self, other: not _same_message(self, other), "__hash__": tuple.__hash__,
            "__bool__": lambda self: True})
        MESSAGES[msg_type] = made
        return cast(M, made)
    return register


@_message(MsgType.RLERROR)
class Rlerror(Message):
    ecode: int = u32()


@_message(MsgType.TVERSION)
class Tversion(Message):
    msize: int = u32()
    version: bytes = string()


@_message(MsgType.RVERSION)
class Rversion(Message):
    msize: int = u32()
    version: bytes = string()


@_message(MsgType.TAUTH)
class Tauth(Message):
    afid: int = u32()
    uname: bytes = string()
    aname: bytes = string()
    n_uname: int = u32()


@_message(MsgType.RAUTH)
class Rauth(Message):
    aqid: Qid = qid()


@_message(MsgType.TATTACH)
class Tattach(Message):
    fid: int = u32()
    afid: int = u32()
    uname: bytes = string()
    aname: bytes = string()
    n_uname: int = u32()


@_message(MsgType.RATTACH)
class Rattach(Message):
    qid: Qid = qid()


@_message(MsgType.TFLUSH)
class Tflush(Message):
    oldtag: int = u16()


@_message(MsgType.RFLUSH)
class Rflush(Message):
    pass


@_message(MsgType.TWALK)
class Twalk(Message):
    fid: int = u32()
    newfid: int = u32()
    wnames: tuple[bytes, ...] = names()


@_message(MsgType.RWALK)
class Rwalk(Message):
    wqids: tuple[Qid, ...] = qids()


@_message(MsgType.TREAD)
class Tread(Message):
    fid: int = u32()
    offset: int = u64()
    count: int = u32()


@_message(MsgType.RREAD)
class Rread(Message):
    data: bytes = data()


@_message(MsgType.TWRITE)
class Twrite(Message):
    fid: int = u32()
    offset: int = u64()
    data: bytes = data()


@_message(MsgType.RWRITE)
class Rwrite(Message):
    count: int = u32()


@_message(MsgType.TCLUNK)
class Tclunk(Message):
    fid: int = u32()


@_message(MsgType.RCLUNK)
class Rclunk(Message):
    pass


@_message(MsgType.TREMOVE)
class Tremove(Message):
    fid: int = u32()


@_message(MsgType.RREMOVE)
class Rremove(Message):
    pass


@_message(MsgType.TSTATFS)
class Tstatfs(Message):
    fid: int = u32()


@_message(MsgType.RSTATFS)
class Rstatfs(Message):
    type: int = u32()
    bsize: int = u32()
    blocks: int = u64()
    bfree: int = u64()
    bavail: int = u64()
    files: int = u64()
    ffree: int = u64()
    fsid: int = u64()
    namelen: int = u32()


@_message(MsgType.TLOPEN)
class Tlopen(Message):
    fid: int = u32()
    flags: int = u32()


@_message(MsgType.RLOPEN)
class Rlopen(Message):
    qid: Qid = qid()
    iounit: int = u32()


@_message(MsgType.TLCREATE)
class Tlcreate(Message):
    fid: int = u32()
    name: bytes = string()
    flags: int = u32()
    mode: int = u32()
    gid: int = u32()


@_message(MsgType.RLCREATE)
class Rlcreate(Message):
    qid: Qid = qid()
    iounit: int = u32()


@_message(MsgType.TSYMLINK)
class Tsymlink(Message):
    fid: int = u32()
    name: bytes = string()
    symtgt: bytes = string()
    gid: int = u32()


@_message(MsgType.RSYMLINK)
class Rsymlink(Message):
    qid: Qid = qid()


@_message(MsgType.TMKNOD)
class Tmknod(Message):
    dfid: int = u32()
    name: bytes = string()
    mode: int = u32()
    major: int = u32()
    minor: int = u32()
    gid: int = u32()


@_message(MsgType.RMKNOD)
class Rmknod(Message):
    qid: Qid = qid()


@_message(MsgType.TRENAME)
class Trename(Message):
    fid: int = u32()
    dfid: int = u32()
    name: bytes = string()


@_message(MsgType.RRENAME)
class Rrename(Message):
    pass


@_message(MsgType.TREADLINK)
class Treadlink(Message):
    fid: int = u32()


@_message(MsgType.RREADLINK)
class Rreadlink(Message):
    target: bytes = string()


@_message(MsgType.TGETATTR)
class Tgetattr(Message):
    fid: int = u32()
    request_mask: int = u64()


@_message(MsgType.RGETATTR)
class Rgetattr(Message):
    valid: int = u64()
    qid: Qid = qid()
    mode: int = u32()
    uid: int = u32()
    gid: int = u32()
    nlink: int = u64()
    rdev: int = u64()
    size: int = u64()
    blksize: int = u64()
    blocks: int = u64()
    atime_sec: int = u64()
    atime_nsec: int = u64()
    mtime_sec: int = u64()
    mtime_nsec: int = u64()
    ctime_sec: int = u64()
    ctime_nsec: int = u64()
    btime_sec: int = u64()
    btime_nsec: int = u64()
    gen: int = u64()
    data_version: int = u64()


@_message(MsgType.TSETATTR)
class Tsetattr(Message):
    fid: int = u32()
    valid: int = u32()
    mode: int = u32()
    uid: int = u32()
    gid: int = u32()
    size: int = u64()
    atime_sec: int = u64()
    atime_nsec: int = u64()
    mtime_sec: int = u64()
    mtime_nsec: int = u64()


@_message(MsgType.RSETATTR)
class Rsetattr(Message):
    pass


@_message(MsgType.TXATTRWALK)
class Txattrwalk(Message):
    fid: int = u32()
    newfid: int = u32()
    name: bytes = string()


@_message(MsgType.RXATTRWALK)
class Rxattrwalk(Message):
    size: int = u64()


@_message(MsgType.TXATTRCREATE)
class Txattrcreate(Message):
    fid: int = u32()
    name: bytes = string()
    attr_size: int = u64()
    flags: int = u32()


@_message(MsgType.RXATTRCREATE)
class Rxattrcreate(Message):
    pass


@_message(MsgType.TREADDIR)
class Treaddir(Message):
    fid: int = u32()
    offset: int = u64()
    count: int = u32()


@_message(MsgType.RREADDIR)
class Rreaddir(Message):
    data: bytes = data()


@_message(MsgType.TFSYNC)
class Tfsync(Message):
    fid: int = u32()
    datasync: int = u32()


@_message(MsgType.RFSYNC)
class Rfsync(Message):
    pass


@_message(MsgType.TLOCK)
class Tlock(Message):
    fid: int = u32()
    type: int = u8()
    flags: int = u32()
    start: int = u64()
    length: int = u64()
    proc_id: int = u32()
    client_id: bytes = string()


@_message(MsgType.RLOCK)
class Rlock(Message):
    status: int = u8()


@_message(MsgType.TGETLOCK)
class Tgetlock(Message):
    fid: int = u32()
    type: int = u8()
    start: int = u64()
    length: int = u64()
    proc_id: int = u32()
    client_id: bytes = string()


@_message(MsgType.RGETLOCK)
class Rgetlock(Message):
    type: int = u8()
    start: int = u64()
    length: int = u64()
    proc_id: int = u32()
    client_id: bytes = string()


@_message(MsgType.TLINK)
class Tlink(Message):
    dfid: int = u32()
    fid: int = u32()
    name: bytes = string()


@_message(MsgType.RLINK)
class Rlink(Message):
    pass


@_message(MsgType.TMKDIR)
class Tmkdir(Message):
    dfid: int = u32()
    name: bytes = string()
    mode: int = u32()
    gid: int = u32()


@_message(MsgType.RMKDIR)
class Rmkdir(Message):
    qid: Qid = qid()


@_message(MsgType.TRENAMEAT)
class Trenameat(Message):
    olddirfid: int = u32()
    oldname: bytes = string()
    newdirfid: int = u32()
    newname: bytes = string()


@_message(MsgType.RRENAMEAT)
class Rrenameat(Message):
    pass


@_message(MsgType.TUNLINKAT)
class Tunlinkat(Message):
    dirfid: int = u32()
    name: bytes = string()
    flags: int = u32()


@_message(MsgType.RUNLINKAT)
class Runlinkat(Message):
    pass


# ---- whole messages --------------------------------------------------------

def read_header(buf: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """(size, type, tag) of a message, the size checked against the buffer."""
    if len(buf) < HEADER_SIZE:
        raise MessageError(f"{len(buf)} bytes cannot hold a 9P header")
    size, msg_type, tag = _HEADER.unpack_from(buf)
    if size != len(buf):
        raise MessageError(f"size field {size} but the message has {len(buf)} bytes", tag=tag)
    return size, msg_type, tag


def decode(buf: bytes | bytearray | memoryview) -> tuple[int, Message]:
    """(tag, message) from the bytes of exactly one message."""
    view = memoryview(buf).cast("B")
    _, msg_type, tag = read_header(view)
    cls = MESSAGES.get(msg_type)
    if cls is None:
        raise MessageError(f"unknown message type {msg_type}", errno.EOPNOTSUPP, tag)
    reader = Reader(view, HEADER_SIZE, tag)
    values = {name: reader.read(kind) for name, kind in cls.FIELDS}
    if reader.remaining:
        raise MessageError(f"{reader.remaining} bytes left over after {cls.__name__}", tag=tag)
    return tag, cls(**values)


def encode(tag: int, msg: Message) -> bytes:
    """The bytes of one message, size field included."""
    out: list[bytes] = []
    for name, kind in msg.FIELDS:
        _write(out, kind, getattr(msg, name))
    body = b"".join(out)
    return _HEADER.pack(HEADER_SIZE + len(body), msg.TYPE, tag) + body


def encode_read_header(tag: int, count: int) -> bytes:
    """An Rread's first ``IO_HEADER_SIZE`` bytes for ``count`` bytes of data
    that follow it elsewhere (a read in place): size, type, tag, count."""
    return _HEADER.pack(IO_HEADER_SIZE + count, MsgType.RREAD, tag) + struct.pack("<I", count)


# ---- Rreaddir entries ------------------------------------------------------

@dataclass(frozen=True)
class Dirent:
    """One Rreaddir entry: ``qid[13] offset[8] type[1] name[s]``; offset is the
    cookie that resumes the listing after this entry."""

    qid: Qid
    offset: int
    type: int
    name: bytes

    def encode(self) -> bytes:
        return (_QID.pack(self.qid.type, self.qid.version, self.qid.path)
                + struct.pack("<QBH", self.offset, self.type, len(self.name)) + self.name)


def dirent_size(name_len: int) -> int:
    return _DIRENT_FIXED + name_len


def decode_dirents(buf: bytes) -> list[Dirent]:
    """The entries of an Rreaddir's data (a client's side; used by tests)."""
    reader = Reader(memoryview(buf), 0, NOTAG)
    entries = []
    while reader.remaining:
        q = reader.read("Q")
        offset, dtype = reader.read("q"), reader.read("b")
        entries.append(Dirent(q, offset, dtype, reader.read("s")))
    return entries
