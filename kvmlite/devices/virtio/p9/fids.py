"""The fid table: what each of the guest's 32-bit handles stands for.

A :class:`Fid` is a node in the share (an O_PATH descriptor), the uid of
the attach it descends from, and at most one of: a descriptor opened for
I/O (Tlopen/Tlcreate), a snapshot of an xattr value or name list being read
(Txattrwalk), or an xattr value being written (Txattrcreate).  An open
fid keeps the P9_DOTL flags it was opened with, and every fid keeps the
names that led to it from the root (``node.path``), so that a snapshot can
record a fid and a restore can find and open its file again (docs/9p.md,
"Snapshots").  A restore turns a fid whose file is gone into a *gone* fid:
it keeps its number until clunked, and every other request on it fails
with ESTALE.

Requests run on several threads at once, so a fid may be clunked while
another request is still reading through it.  The table therefore lends
fids out: :meth:`FidTable.use` counts a user for as long as the request
holds it, and a clunked fid closes its descriptors only when its last user
gives it back, so a descriptor number is never closed (and reused by the
next open) under a request that still reads from it.  Operations that turn
a fid into something else (walk onto itself, Tlcreate, Txattrcreate)
replace the Fid object in the table rather than change it.

Locks: ``FidTable._lock`` guards the table and every fid's ``users`` and
``clunked`` fields; it is held only for dictionary work, never across a
system call other than the closes of a fid's last release.  A fid's
``io_lock`` serialises Treaddir's seek and read on its directory
descriptor and the Twrites that fill a pending xattr value, and
``open_lock`` its one-time Tlopen.
"""

from __future__ import annotations

import errno
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from kvmlite.devices.virtio.p9.fs import Node, Share, fail


@dataclass
class XattrRead:
    """Txattrwalk's result: the value (or name list) read once, served by Tread."""

    value: bytes


@dataclass
class XattrWrite:
    """Txattrcreate's pending value: filled by Twrite, set on Tclunk."""

    name: bytes
    size: int
    flags: int
    value: bytearray = field(default_factory=bytearray)


@dataclass
class Fid:
    node: Node
    uid: int | None
    open_fd: int | None = None
    open_flags: int | None = None      # the P9_DOTL flags of Tlopen/Tlcreate, while open_fd is set
    xattr: XattrRead | XattrWrite | None = None
    users: int = 0
    clunked: bool = False
    gone: bool = False                 # restored, but its file could not be found again: ESTALE
    io_lock: threading.Lock = field(default_factory=threading.Lock)
    open_lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        if self.open_fd is not None:
            os.close(self.open_fd)
            self.open_fd = None
        Share.release(self.node)


class FidTable:
    """At most ``limit`` fids: each holds one or two host descriptors, and a
    guest must not be able to use up the VMM's (EMFILE past the limit)."""

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self._fids: dict[int, Fid] = {}
        self._limit = limit

    def __len__(self) -> int:
        with self._lock:
            return len(self._fids)

    def __contains__(self, number: int) -> bool:
        with self._lock:
            return number in self._fids

    @contextmanager
    def use(self, number: int) -> Iterator[Fid]:
        """The fid ``number``, held for the duration (EBADF if unknown)."""
        fid = self.borrow(number)
        try:
            yield fid
        finally:
            self.give_back(fid)

    def borrow(self, number: int) -> Fid:
        """The fid ``number``, counted in use; EBADF if unknown, ESTALE if gone."""
        with self._lock:
            fid = self._fids.get(number)
            if fid is None:
                raise fail(errno.EBADF, f"no fid {number}")
            if fid.gone:
                raise fail(errno.ESTALE, f"fid {number}: its file was not found again after a restore")
            fid.users += 1
            return fid

    def items(self) -> list[tuple[int, Fid]]:
        """Every (number, fid), in number order (a snapshot, taken with no
        request running)."""
        with self._lock:
            return sorted(self._fids.items(), key=lambda item: item[0])

    def install(self, fids: dict[int, Fid]) -> None:
        """Make ``fids`` the whole table (a restore, on a cleared table with
        no request running); EMFILE, and every one of them closed, if they
        are more than the limit."""
        with self._lock:
            if not self._fids and len(fids) <= self._limit:
                self._fids.update(fids)
                return
        for fid in fids.values():
            fid.close()
        raise fail(errno.EMFILE, f"{len(fids)} fids to restore into a table of {self._limit} "
                                 f"holding {len(self)}")

    def give_back(self, fid: Fid) -> None:
        with self._lock:
            fid.users -= 1
            last = fid.clunked and fid.users == 0
        if last:
            fid.close()

    def add(self, number: int, fid: Fid) -> None:
        """Install a new fid; EEXIST if the number is taken, EMFILE if the
        table is full (``fid`` closed in both cases)."""
        with self._lock:
            if number in self._fids:
                error = fail(errno.EEXIST, f"fid {number} is in use")
            elif len(self._fids) >= self._limit:
                error = fail(errno.EMFILE, f"{self._limit} fids in use")
            else:
                self._fids[number] = fid
                return
        fid.close()
        raise error

    def replace(self, number: int, old: Fid, new: Fid) -> None:
        """Put ``new`` where ``old`` was; ``old`` closes once it is unused.
        EBADF (and ``new`` closed) if ``old`` is no longer there."""
        with self._lock:
            if self._fids.get(number) is old:
                self._fids[number] = new
                old.clunked = True
                closing = old.users == 0
            else:
                closing = None
        if closing is None:
            new.close()
            raise fail(errno.EBADF, f"fid {number} changed meanwhile")
        if closing:
            old.close()

    def take(self, number: int) -> Fid:
        """Remove ``number`` from the table (Tclunk, Tremove) and lend it to the
        caller, who gives it back; EBADF if unknown.  A gone fid is taken
        too: clunking it is how the guest lets it go."""
        with self._lock:
            fid = self._fids.pop(number, None)
            if fid is None:
                raise fail(errno.EBADF, f"no fid {number}")
            fid.clunked = True
            fid.users += 1
            return fid

    def clear(self) -> None:
        """Forget every fid (Tversion, reset).  A pending xattr write is
        dropped, not set; fids still in use close when given back."""
        with self._lock:
            fids = list(self._fids.values())
            self._fids.clear()
            idle = []
            for fid in fids:
                fid.clunked = True
                if fid.users == 0:
                    idle.append(fid)
        for fid in idle:
            fid.close()

    def rename_paths(self, old: tuple[bytes, ...], new: tuple[bytes, ...]) -> None:
        """After a rename through this server: every fid at or below ``old``
        now lives at or below ``new``."""
        with self._lock:
            for fid in self._fids.values():
                path = fid.node.path
                if path[:len(old)] == old:
                    fid.node.path = new + path[len(old):]
