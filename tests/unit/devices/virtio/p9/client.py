"""A test-side 9P client: builds T-messages, runs them through a server's
``handle`` and checks each reply's framing and tag before returning it."""

from __future__ import annotations

import errno
from typing import Any, TypeVar

from kvmlite.devices.virtio.p9 import codec
from kvmlite.devices.virtio.p9.codec import Dirent, Message, Rlerror
from kvmlite.devices.virtio.p9.constants import NOFID, NONUNAME, NOTAG
from kvmlite.devices.virtio.p9.server import P9Server

R = TypeVar("R", bound=Message)


class P9Error(AssertionError):
    pass


class P9Client:
    def __init__(self, server: P9Server) -> None:
        self.server = server
        self._tag = 0

    def call(self, msg: Message, tag: int | None = None) -> Message:
        if tag is None:
            self._tag = (self._tag + 1) % NOTAG
            tag = self._tag
        reply = self.server.handle(codec.encode(tag, msg))
        got_tag, decoded = codec.decode(reply)
        assert got_tag == tag, f"reply tag {got_tag} for request tag {tag}"
        return decoded

    def ok(self, msg: Message, expect: type[R] | None = None) -> Any:
        reply = self.call(msg)
        if isinstance(reply, Rlerror):
            raise P9Error(f"{msg!r} failed: {errno.errorcode.get(reply.ecode, reply.ecode)}")
        assert reply.TYPE == msg.TYPE + 1, f"{type(reply).__name__} answers {type(msg).__name__}"
        return reply

    def error(self, msg: Message) -> int:
        reply = self.call(msg)
        assert isinstance(reply, Rlerror), f"{msg!r} succeeded: {reply!r}"
        return reply.ecode

    # ---- conveniences -------------------------------------------------------------

    def version(self, msize: int = 1 << 20) -> codec.Rversion:
        return self.ok(codec.Tversion(msize, b"9P2000.L"))

    def attach(self, fid: int = 0, uid: int = NONUNAME) -> codec.Qid:
        return self.ok(codec.Tattach(fid, NOFID, b"user", b"", uid)).qid

    def walk(self, fid: int, newfid: int, *names: bytes) -> tuple[codec.Qid, ...]:
        return self.ok(codec.Twalk(fid, newfid, names)).wqids

    def open(self, fid: int, flags: int = 0) -> codec.Qid:
        return self.ok(codec.Tlopen(fid, flags)).qid

    def create(self, fid: int, name: bytes, flags: int = 2, mode: int = 0o644, gid: int = 0) -> codec.Qid:
        return self.ok(codec.Tlcreate(fid, name, flags, mode, gid)).qid

    def read(self, fid: int, offset: int = 0, count: int = 65536) -> bytes:
        return self.ok(codec.Tread(fid, offset, count)).data

    def write(self, fid: int, data: bytes, offset: int = 0) -> int:
        return self.ok(codec.Twrite(fid, offset, data)).count

    def clunk(self, fid: int) -> None:
        self.ok(codec.Tclunk(fid))

    def getattr(self, fid: int) -> codec.Rgetattr:
        return self.ok(codec.Tgetattr(fid, 0x3FFF))

    def readdir(self, fid: int, count: int = 8192) -> list[Dirent]:
        """Every entry, following the cookies across as many calls as it takes."""
        entries: list[Dirent] = []
        offset = 0
        while True:
            data = self.ok(codec.Treaddir(fid, offset, count)).data
            if not data:
                return entries
            batch = codec.decode_dirents(data)
            entries += batch
            offset = batch[-1].offset

    def names(self, fid: int, count: int = 8192) -> set[bytes]:
        return {e.name for e in self.readdir(fid, count)} - {b".", b".."}

    def open_path(self, newfid: int, *names: bytes, flags: int = 0, root: int = 0) -> None:
        self.walk(root, newfid, *names)
        self.open(newfid, flags)
