"""virtio-9p: a host directory shared with the guest over 9P2000.L.

The transport is virtio 1.2's device ID 9 ("9P transport"); its feature
bit and configuration space are Linux's ``include/uapi/linux/virtio_9p.h``
(``net/9p/trans_virtio.c`` is the driver): feature VIRTIO_9P_MOUNT_TAG
(bit 0), and a configuration space of ``le16 tag_len`` followed by the
tag's bytes (no NUL), the name the guest mounts (``mount -t 9p -o
trans=virtio TAG /mnt``).  One queue, ``requests``: each chain's
device-readable part is one T-message (a large Twrite carries its data in
further readable buffers after the header, the size field counting them),
its device-writable part the room for the R-message (a large Tread's data
lands in the writable buffers after the first 11 bytes).  The file server
is :class:`~kvmlite.devices.virtio.p9.P9Server` (docs/9p.md); this module
only moves bytes between the ring and it.

Threads.

* The device's event loop (``loop``, ``virtio-9p<N>`` in a VM, this
  device's alone) pops chains: ``queue_notify`` runs there, or hands
  itself there from any other thread (``call_soon``).  Popping copies the
  request out of guest memory (bounded, see below).  Most requests (walk,
  getattr, lcreate, clunk, unlinkat, a small read or write...) are then
  served right there on the loop thread once the lock is released, in the
  order popped: they cost no hand-off between threads, which was most of
  a small request's time in the VMM.  A long one (a Treaddir, a Tread or
  Twrite of ``WRITE_IN_PLACE`` bytes or more) is served there too when it
  is alone (nothing on the workers, nothing popped with it), as a
  sequential reader's or writer's requests are; with others in flight it
  is queued for a worker, so that they run side by side.  A Tfsync, which
  waits for the disk, always goes to a worker (``ON_WORKERS``), and so does
  any request that arrives while an old session's requests are still
  inside the server (after a reset), so the loop never waits at the door.
* ``workers`` threads (``<name>:w<i>``, started at the first activation,
  stopped by :meth:`close`) call ``server.handle``: several requests run at
  once and complete in any order, as 9P allows.  In ``on_reply`` the reply
  is written into the chain's writable buffers, the used element added,
  and the interrupt raised if the driver wants one.  A slow file system
  occupies this share's workers and loop and nothing else: no vCPU, no
  other device waits for it.

Reads in place.  A Tread's data does not pass through a bytes object: the
thread serving it hands the server ``read_into`` (:meth:`Virtio9p._read_into`),
which ``preadv``s the file straight into the chain's writable buffers
after the Rread header's 11 bytes, counted in ``placing`` while it
writes; the reply then is only that header, and the used length adds the
data placed.  When the buffers cannot hold the count asked, the server
reads as usual (a short file's reply may still fit).  Writes the same
way: a Twrite of at least ``WRITE_IN_PLACE`` bytes is copied out of the
ring only as far as its 23 header bytes; its data stays in the guest's
readable buffers (:class:`_GuestData`) and is written to the file with
one ``pwritev`` from there.  ``reset`` waits, after stopping the
activation, until no transfer in place touches its memory: the one place
where a reset waits for the file system.

Lock.  ``_lock`` (with the conditions ``_changed`` and ``_job`` on it) guards
the activation, the queue (pop, add_used, notification state), the job queue
and the counters.  It is held while popping and copying a request, and
while writing a reply and publishing it; never across ``server.handle``,
and the interrupt, ``call_soon`` and ``on_needs_reset`` are called with it
released.  Order: the transport's lock (``activate``, ``queue_notify``,
``reset``) -> ``_lock`` -> the server's own locks.  The server never calls
back into the device while holding one of its locks, so ``on_reply`` may
take ``_lock``.

Bounds (the guest is hostile).  At most ``workers + backlog`` requests are
popped and not yet answered; past that the device stops popping and the
rest stay in the ring until a reply frees a slot (its publisher then hands
a pop to the loop).  A request is read only as far as its size field says,
and only when that size is at least a header, at most the readable bytes
and at most the negotiated msize (``max_msize`` before Tversion): a larger
one is answered Rlerror EMSGSIZE and a truncated one Rlerror EPROTO
without reading its body.  A chain whose writable part cannot hold the
smallest reply (7 bytes) is returned unread with used length 0.  A reply
longer than the writable room becomes Rlerror EMSGSIZE (or, when even that
does not fit, the chain is returned with used length 0).  Nothing is read
or written outside the chain's buffers.  A malformed ring (a writable
descriptor before a readable one, a loop, buffers outside RAM) stops the
device and asks for DEVICE_NEEDS_RESET, as the other devices do.  A guest
that never takes its replies only stops posting chains: replies go
straight into its buffers, and nothing queues up in the VMM.

Flush.  The server answers Tflush once every request with that tag that is
inside ``handle`` has passed its reply to ``on_reply`` (docs/9p.md,
"Flush"); requests popped but still waiting for a worker are not inside it
yet.  So the device holds a Tflush back, unqueued, until every request
with its oldtag popped before it has been published, and only then hands
it to a worker: a flushed request's reply is in the used ring before the
Rflush, whichever worker runs what.  A Tflush waits only on requests popped
earlier, so two Tflushes cannot wait on each other.

Reset.  ``reset`` does not wait for the file system: it marks the
activation stopped, drops its queued requests and resets the server's
session.  Requests already inside ``server.handle`` finish on their
workers; their replies are dropped (``abandoned``) because publishing
checks, under ``_lock``, that the activation is still the current one, so
nothing touches the old activation's guest memory once ``reset`` has
returned.  Until the last of them has left the server, requests of a new
activation wait at the door (a late Tversion or Tattach of the old driver
must not land in the new session), and the server's session is reset once
more as the last one leaves.

Snapshots (docs/9p.md, "Snapshots").  ``save_device_state`` stops popping
(a chain still in the ring stays there, and the restored device pops it),
waits up to ``SAVE_TIMEOUT`` seconds until no request is popped and
unanswered and none of an old activation is inside the server, then saves
the mount tag and the server's session (:meth:`P9Server.save_session`:
msize, and every fid by the names leading to its file); popping resumes
as it returns.  A VM snapshot holds the device's loop while the state is
taken, so nothing is popped between this and the transport reading the
queue's position.  ``restore_device_state`` runs after the transport has
activated the fresh device and before its loop runs (Vm builds, restores,
then starts the loops), and rebuilds the session
(:meth:`P9Server.restore_session`): a chain the guest left in the ring is
served against the restored fids.
"""

from __future__ import annotations

import errno
import functools
import logging
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory, GuestMemoryError
from kvmlite.base.state import Reader, StateError
from kvmlite.devices.virtio.device import (VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
                                           VIRTIO_ID_9P, VirtioDevice, VirtioInterrupt)
from kvmlite.devices.virtio.iov import Segments
from kvmlite.devices.virtio.p9 import codec
from kvmlite.devices.virtio.p9.codec import Rlerror
from kvmlite.devices.virtio.disk import read_into, write_from
from kvmlite.devices.virtio.p9.constants import HEADER_SIZE, IO_HEADER_SIZE, NOTAG, MsgType
from kvmlite.devices.virtio.p9.server import TWRITE_HEAD, P9Server
from kvmlite.devices.virtio.queue import DescriptorChain, Queue, QueueError
from kvmlite.devices.virtio.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)
T = TypeVar("T")

# linux/virtio_9p.h
VIRTIO_9P_MOUNT_TAG = 1 << 0

REQUESTQ = 0
QUEUE_SIZE = 128            # as QEMU and kvmtool; Linux's driver chains up to 128 buffers
WORKERS = 4                 # requests inside the server at once
BACKLOG = 4                 # requests popped beyond those the workers are running
MAX_TAG_LEN = 31            # bytes of a mount tag (kvmlite's limit; the u16 tag_len allows more)
CLOSE_TIMEOUT = 10.0        # seconds close() waits for requests still inside the server
SAVE_TIMEOUT = 10.0         # seconds save_device_state waits for the requests in flight
WRITE_IN_PLACE = 4096       # a Twrite of at least this many bytes is written from the guest's buffers
# Where a request runs (module docstring, "Threads"): a Tfsync always on a worker; a long one
# (a Treaddir, a Tread or Twrite of at least WRITE_IN_PLACE bytes) on the loop thread only when
# nothing else is in flight; any other on the loop thread.
ON_WORKERS = frozenset({MsgType.TFSYNC})
_TRANSFERS = frozenset({MsgType.TREAD, MsgType.TWRITE})
_COUNT = struct.Struct("<I")            # a Tread's or Twrite's count, after fid[4] offset[8]
_COUNT_OFFSET = HEADER_SIZE + 4 + 8

STAT_NAMES = ("requests", "bytes_read", "bytes_written", "errors", "queue_errors", "abandoned")

_HEADER = struct.Struct("<IBH")         # size[4] type[1] tag[2]
_TAG_LEN = struct.Struct("<H")          # virtio_9p_config.tag_len (little-endian with VERSION_1)
_OLDTAG = struct.Struct("<H")
_TFLUSH_SIZE = HEADER_SIZE + _OLDTAG.size


def _transfer_count(data: bytes) -> int:
    """A Tread's or Twrite's count field (0 when the message is too short
    to hold one: the server answers it as malformed)."""
    return _COUNT.unpack_from(data, _COUNT_OFFSET)[0] if len(data) >= _COUNT_OFFSET + _COUNT.size else 0


@dataclass(eq=False)
class _Activation:
    """What one DRIVER_OK..reset period of the device uses."""

    memory: GuestMemory
    queue: Queue
    interrupt: VirtioInterrupt
    stopped: bool = False
    outstanding: int = 0        # popped, not yet published
    running: int = 0            # inside server.handle
    throttled: bool = False     # popping stopped at the limit; the next reply resumes it
    placing: int = 0            # transfers in place touching this activation's guest memory now
    by_tag: dict[int, list["_Request"]] = field(default_factory=dict)   # unpublished, flushable


@dataclass(eq=False)
class _Request:
    """One popped request: its bytes, copied out of the ring, and where its
    reply goes.  Compared by identity."""

    activation: _Activation
    head: int
    reply_to: Segments          # the chain's writable buffers
    room: int                   # their bytes
    data: bytes
    tag: int
    flushes: list["_Request"] = field(default_factory=list)   # Tflushes held back for this request
    waits: int = 0              # a Tflush: the earlier requests it waits for
    published: bool = False
    placed: int = 0             # Rread data a read in place put after the reply's header
    source: "_GuestData | None" = None   # a Twrite's data, left in the guest's buffers


class _GuestData:
    """A Twrite's ``count`` data bytes in the guest's readable buffers
    (``P9Server``'s WriteSource): written to the file from there with one
    ``pwritev``.  After a reset, EIO: the buffers are the driver's again."""

    def __init__(self, device: "Virtio9p", active: _Activation, segments: Segments, count: int) -> None:
        self._device = device
        self._active = active
        self._segments = segments
        self.count = count

    def write_to(self, fd: int, offset: int) -> int:
        memory, segments = self._active.memory, self._segments
        written = self._device._in_place(self._active, lambda: write_from(
            fd, memory.io_buffers(segments.addrs, segments.lens), offset))
        if written is None:
            raise OSError(errno.EIO, "the device was reset")
        return written

    def gather(self) -> bytes:
        data = self._device._in_place(self._active, lambda: self._segments.gather(self._active.memory))
        if data is None:
            raise OSError(errno.EIO, "the device was reset")
        return data


class Virtio9p(VirtioDevice):
    """A virtio-9p device serving ``server`` under the mount tag ``tag``;
    chains are popped on ``loop`` and served by ``workers`` threads.

    The device owns ``server`` from here on: :meth:`close` closes it.
    Raises ValueError for an empty tag or one over ``MAX_TAG_LEN`` bytes."""

    device_type = VIRTIO_ID_9P
    snapshot_supported = True       # the session, by path (module docstring, "Snapshots")

    def __init__(self, server: P9Server, tag: str, loop: EventLoop, workers: int = WORKERS, *,
                 backlog: int = BACKLOG, queue_size: int = QUEUE_SIZE, name: str = "virtio-9p") -> None:
        super().__init__()
        raw = tag.encode()
        if not 1 <= len(raw) <= MAX_TAG_LEN:
            raise ValueError(f"a mount tag is 1..{MAX_TAG_LEN} bytes, not {len(raw)}")
        if workers < 1 or backlog < 0:
            raise ValueError(f"{workers} workers and a backlog of {backlog}: need a worker")
        self.server = server
        self.tag = tag
        self.loop = loop
        self.name = name
        self.queue_max_sizes = (queue_size,)
        self._config = _TAG_LEN.pack(len(raw)) + raw
        self._workers = workers
        self._limit = workers + backlog
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # stale requests gone, idle, closing
        self._job = threading.Condition(self._lock)      # a job queued (one worker woken), closing (all)
        self._jobs: deque[_Request] = deque()
        self._threads: list[threading.Thread] = []
        self._active: _Activation | None = None
        self._stale = 0             # requests of stopped activations still inside server.handle
        self._closing = False
        self._holding = False       # save_device_state: pop nothing
        self._held_pop = False      # a pop was skipped while holding; done when the hold ends
        self._server_open = True    # False once close() has closed it, or handed that to the last request
        self._close_late = False    # close() timed out: the last stale request closes the server
        self._errors = RateLimitedLog(log)
        self._stats = dict.fromkeys(STAT_NAMES, 0)

    # --- VirtioDevice (the transport, under its lock) ---

    def device_features(self) -> int:
        return VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_9P_MOUNT_TAG

    def read_config(self, offset: int, data: memoryview) -> None:
        """``le16 tag_len``, then the tag; zeros past its end."""
        chunk = self._config[offset:offset + len(data)] if offset >= 0 else b""
        data[:len(chunk)] = chunk
        data[len(chunk):] = bytes(len(data) - len(chunk))

    def activate(self, memory: GuestMemory, queues: list[Queue], driver_features: int,
                 interrupt: VirtioInterrupt) -> None:
        self.reset()
        queue = queues[0]
        if not queue.ready:
            return
        try:
            queue.configure(memory, driver_features)
        except QueueError as exc:
            self._fail(exc)
            return
        active = _Activation(memory, queue, interrupt)
        with self._lock:
            if self._closing:
                return
            self._active = active
        self._start_workers()
        self.loop.call_soon(functools.partial(self._serve, active))   # chains posted before DRIVER_OK

    def queue_notify(self, queue_index: int) -> None:
        """Pops on the loop thread; handed to it from any other."""
        active = self._active
        if active is None or queue_index != REQUESTQ:
            return
        if self.loop.on_loop_thread():
            self._serve(active)
        else:
            self.loop.call_soon(functools.partial(self._serve, active))

    def reset(self) -> None:
        """Stop the activation without waiting for the file system (module
        docstring, "Reset"); forget the server's session."""
        with self._lock:
            active, self._active = self._active, None
            if active is not None:
                self._stop(active)
                self._changed.wait_for(lambda: active.placing == 0)   # no write into its memory after this
            server_open = self._server_open and not self._close_late
        if server_open:
            self.server.reset()

    # --- snapshots (kvmlite.base.state; the transport's lock held) ---

    def save_device_state(self) -> dict:
        """Finish the requests in flight, then save the tag and the server's
        session; StateError if a request is still running after
        ``SAVE_TIMEOUT`` seconds (a stuck host file system)."""
        with self._lock:
            self._holding = True
            idle = self._changed.wait_for(
                lambda: (self._active is None or self._active.outstanding == 0) and self._stale == 0, SAVE_TIMEOUT)
        try:
            if not idle:
                raise StateError(f"{self.name}: a request is still running in the shared directory after "
                                 f"{SAVE_TIMEOUT:g} s")
            with self._lock:
                server_open = self._server_open and not self._close_late
            session = self.server.save_session() if server_open else {"msize": 0, "version": "", "fids": []}
            return {"tag": self.tag, "session": session}
        finally:
            with self._lock:
                self._holding = False
                active = self._active if self._held_pop else None
                self._held_pop = False
            if active is not None:
                self.loop.call_soon(functools.partial(self._serve, active))

    def restore_device_state(self, state: dict) -> None:
        """Rebuild the server's session on the fresh device (after the
        transport re-activated it): every fid found again beneath the share
        by its saved names, open ones opened again; a fid whose file is gone
        answers ESTALE.  StateError (naming the device) for a state that is
        not one :meth:`save_device_state` could have made."""
        r = Reader(state, self.name)
        tag = r.str("tag")
        if tag != self.tag:
            raise StateError(f"{self.name}: saved mount tag {tag!r}, this share's is {self.tag!r}")
        self.server.restore_session(r.sub("session").state, f"{self.name} session")

    def stats(self) -> dict[str, int]:
        """``requests`` chains popped; ``bytes_read`` request bytes copied
        from the guest, ``bytes_written`` reply bytes written to it;
        ``errors`` chains refused or replies that did not fit;
        ``queue_errors`` malformed rings; ``abandoned`` requests dropped or
        replies discarded because a reset came first."""
        with self._lock:
            return dict(self._stats)

    # --- lifetime beyond the ABC ---

    def close(self) -> None:
        """VM shutdown: reset, stop the workers, close the server.  A request
        still inside the server after ``CLOSE_TIMEOUT`` seconds keeps the
        server open; the worker that finishes it closes it.  Call without
        the transport's lock held; the loop is its owner's to close."""
        with self._lock:
            if self._closing:
                return
        self.reset()
        with self._lock:
            self._closing = True
            self._changed.notify_all()
            self._job.notify_all()
            idle = self._changed.wait_for(lambda: self._stale == 0, CLOSE_TIMEOUT)
            if idle:
                self._server_open = False
            else:
                self._close_late = True
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(timeout=CLOSE_TIMEOUT if idle else 0.1)
        if idle:
            self.server.close()
        else:
            log.warning("%s: a request is still running in the shared directory; the share closes "
                        "when it returns", self.name)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every request popped so far has been answered (tests)."""
        with self._lock:
            return self._changed.wait_for(
                lambda: (self._active is None or self._active.outstanding == 0) and self._stale == 0, timeout)

    # --- popping (the loop thread) ---

    def _serve(self, active: _Activation) -> None:
        """Pop what the driver made available, up to the limit; then serve
        the small requests among them here, in the order popped."""
        error = None
        here: list[_Request] = []
        with self._lock:
            if active.stopped:
                return
            if self._holding:
                self._held_pop = True
                return
            try:
                notify = self._pop(active, here)
            except (QueueError, GuestMemoryError) as exc:    # the latter a backstop: pop checked the buffers
                notify, error = False, exc
                self._stop(active)
                self._active = None if self._active is active else self._active
        if notify:
            active.interrupt.signal_used_queue(REQUESTQ)
        if error is not None:
            self._fail(error)
        for request in here:
            with self._lock:
                if self._stale:     # an old session's requests are still inside: wait on a worker, not here
                    self._queue(request)
                    continue
                entered = self._enter(request)
            if entered:
                self._run(request)

    def _pop(self, active: _Activation, here: list[_Request]) -> bool:
        """Pop until the ring is empty after re-enabling notifications
        (§2.7.10), or the limit is reached; ``_lock`` held.  Requests to
        serve on the loop thread are added to ``here``, the rest queued for
        the workers.  True when a reply made here (a refused chain) wants
        an interrupt."""
        queue, memory = active.queue, active.memory
        answered = False
        while True:
            if active.outstanding >= self._limit:
                active.throttled = True
                break
            chain = queue.pop(memory)
            if chain is None:
                if queue.enable_notification(memory):
                    continue
                break
            try:
                answered |= self._take(active, chain, here)
            finally:
                chain.release()
        return answered and queue.needs_notification(memory)

    def _take(self, active: _Activation, chain: DescriptorChain, here: list[_Request]) -> bool:
        """Copy one request out of ``chain`` and queue it for the workers or
        add it to ``here`` (:meth:`_on_workers` decides), or answer it at
        once when it is malformed (then True)."""
        memory = active.memory
        self._stats["requests"] += 1
        reply_to, room = chain.writable_segments(), chain.writable_len
        if room < HEADER_SIZE:
            self._refuse(f"request {chain.head} has {room} writable bytes, too few for any reply")
            active.queue.add_used(memory, chain.head, 0)
            return True
        readable = chain.readable_segments()
        header = readable.gather(memory, HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            return self._answer_here(active, chain, NOTAG, errno.EPROTO,
                                     f"request {chain.head} has {len(header)} readable bytes, less than a header")
        size, msg_type, tag = _HEADER.unpack(header)
        limit = self.server.msize or self.server.max_msize
        if size > limit:
            return self._answer_here(active, chain, tag, errno.EMSGSIZE, f"a {size}-byte request over msize {limit}")
        if not HEADER_SIZE <= size <= chain.readable_len:
            return self._answer_here(active, chain, tag, errno.EPROTO,
                                     f"size field {size} with {chain.readable_len} readable bytes")
        source = None
        if msg_type == MsgType.TWRITE and size >= WRITE_IN_PLACE:
            head, rest = readable.split_at(TWRITE_HEAD)
            data = head.gather(memory)
            source = _GuestData(self, active, rest.split_at(size - TWRITE_HEAD)[0], size - TWRITE_HEAD)
        else:
            data = readable.gather(memory, size)
        self._stats["bytes_read"] += size
        request = _Request(active, chain.head, reply_to, room, data, tag, source=source)
        active.outstanding += 1
        if msg_type == MsgType.TFLUSH and size == _TFLUSH_SIZE:
            (oldtag,) = _OLDTAG.unpack_from(data, HEADER_SIZE)
            for earlier in active.by_tag.get(oldtag, ()):
                earlier.flushes.append(request)
                request.waits += 1
        elif msg_type != MsgType.TVERSION:      # Tflush and Tversion are not flushable (docs/9p.md)
            active.by_tag.setdefault(tag, []).append(request)
        if request.waits:
            pass                                # a Tflush, released by _retire
        elif self._on_workers(active, msg_type, data, here):
            self._queue(request)
        else:
            here.append(request)
        return False

    def _on_workers(self, active: _Activation, msg_type: int, data: bytes, here: list[_Request]) -> bool:
        """Whether a request goes to the workers rather than ``here``
        (module docstring, "Threads"); ``_lock`` held."""
        if msg_type in ON_WORKERS:
            return True
        if msg_type == MsgType.TREADDIR or (msg_type in _TRANSFERS and _transfer_count(data) >= WRITE_IN_PLACE):
            return bool(here or self._jobs or active.running)      # long: here only when alone
        return False

    def _answer_here(self, active: _Activation, chain: DescriptorChain, tag: int, code: int, why: str) -> bool:
        """Answer a malformed request with Rlerror on the loop thread."""
        self._refuse(f"request {chain.head}: {why}")
        reply = codec.encode(tag, Rlerror(code))
        written = 0
        if len(reply) <= chain.writable_len:        # else: no partial message, used length 0
            written = chain.writable_segments().scatter(active.memory, reply)
        self._stats["bytes_written"] += written
        active.queue.add_used(active.memory, chain.head, written)
        return True

    def _queue(self, request: _Request) -> None:
        self._jobs.append(request)
        self._job.notify()          # one idle worker, not all of them

    # --- the workers ---

    def _start_workers(self) -> None:
        with self._lock:
            if self._threads:
                return
            self._threads = [threading.Thread(target=self._worker, name=f"{self.name}:w{i}", daemon=True)
                             for i in range(self._workers)]
        for thread in self._threads:
            thread.start()

    def _worker(self) -> None:
        while True:
            with self._lock:
                self._job.wait_for(lambda: self._jobs or self._closing)
                if not self._jobs:
                    return
                request = self._jobs.popleft()
                if not self._enter(request):
                    continue
            self._run(request)

    def _enter(self, request: _Request) -> bool:
        """Wait until no request of an older activation is inside the
        server, then count this one in; False (dropped) when its own
        activation stopped meanwhile.  ``_lock`` held."""
        active = request.activation
        self._changed.wait_for(lambda: self._stale == 0 or active.stopped)
        if active.stopped:
            self._stats["abandoned"] += 1
            return False
        active.running += 1
        return True

    def _run(self, request: _Request) -> None:
        """Serve one request (a worker or the loop thread, no lock held); it is always answered."""
        try:
            self.server.handle(request.data, on_reply=functools.partial(self._publish, request),
                               read_into=functools.partial(self._read_into, request), write_from=request.source)
        except Exception as exc:        # a server fault; the guest still gets an answer
            self._errors.warning(f"{self.name}: the server failed on request {request.head}: {exc!r}")
        finally:
            if not request.published:
                self._publish(request, codec.encode(request.tag, Rlerror(errno.EIO)))
            self._leave(request)

    def _read_into(self, request: _Request, fd: int, count: int, offset: int) -> int | None:
        """A Tread's data read from ``fd`` straight into the chain's writable
        buffers after the Rread header (module docstring, "Reads in
        place"); None when the buffers cannot hold ``count`` bytes (the
        server then reads as usual and answers as the room allows) or the
        activation has stopped."""
        if request.room < IO_HEADER_SIZE + count:
            return None
        data = request.reply_to.split_at(IO_HEADER_SIZE)[1].split_at(count)[0]
        placed = self._in_place(request.activation, lambda: read_into(
            fd, request.activation.memory.io_buffers(data.addrs, data.lens), offset))
        if placed is not None:
            request.placed = placed
        return placed

    def _in_place(self, active: _Activation, transfer: Callable[[], T]) -> T | None:
        """``transfer`` between a file and ``active``'s guest memory, counted
        in ``placing`` so that ``reset`` waits for it; None (not run) once
        the activation has stopped."""
        with self._lock:
            if active.stopped:
                return None
            active.placing += 1
        try:
            return transfer()
        finally:
            with self._lock:
                active.placing -= 1
                if not active.placing:
                    self._changed.notify_all()

    def _leave(self, request: _Request) -> None:
        with self._lock:
            if not request.activation.stopped:
                request.activation.running -= 1
                return
            self._stale -= 1
            if self._stale:
                return
            # The last request of an old session has left: reset the session it may have
            # touched, before the door opens for the new activation's requests.
            if self._close_late:            # close() timed out waiting for this one
                self._server_open = self._close_late = False
                self.server.close()
            elif self._server_open:
                self.server.reset()
            self._changed.notify_all()

    # --- publishing (a worker or the loop thread, inside server.handle's on_reply) ---

    def _publish(self, request: _Request, reply: bytes) -> None:
        """Write ``reply`` into the request's chain and return it to the
        driver, unless a reset came first."""
        active = request.activation
        notify, resume, error = False, False, None
        with self._lock:
            if request.published:
                return
            request.published = True
            if active.stopped:
                self._stats["abandoned"] += 1
                return
            try:
                active.queue.add_used(active.memory, request.head, self._write_reply(request, reply))
                notify = active.queue.needs_notification(active.memory)
            except (QueueError, GuestMemoryError) as exc:
                error = exc
                self._stop(active)
                self._active = None if self._active is active else self._active
            else:
                resume = self._retire(active, request)
        if notify:
            active.interrupt.signal_used_queue(REQUESTQ)
        if resume:
            self.loop.call_soon(functools.partial(self._serve, active))
        if error is not None:
            self._fail(error)

    def _write_reply(self, request: _Request, reply: bytes) -> int:
        """Scatter ``reply`` into the writable buffers; the bytes written."""
        if len(reply) > request.room:
            self._refuse(f"request {request.head}: a {len(reply)}-byte reply does not fit "
                         f"{request.room} writable bytes")
            reply = codec.encode(request.tag, Rlerror(errno.EMSGSIZE))
            if len(reply) > request.room:
                return 0
        written = request.reply_to.scatter(request.activation.memory, reply)
        if request.placed and len(reply) == IO_HEADER_SIZE and reply[4] == MsgType.RREAD:
            written += request.placed          # its data is in place already
        self._stats["bytes_written"] += written
        return written

    def _retire(self, active: _Activation, request: _Request) -> bool:
        """A request is answered: free its slot and release the Tflushes
        that waited for it.  True when popping should resume."""
        active.outstanding -= 1
        if not active.outstanding:
            self._changed.notify_all()      # wait_idle
        same_tag = active.by_tag.get(request.tag)
        if same_tag is not None and request in same_tag:
            same_tag.remove(request)
            if not same_tag:
                del active.by_tag[request.tag]
        for flush in request.flushes:
            flush.waits -= 1
            if not flush.waits:
                self._queue(flush)
        if active.throttled and active.outstanding < self._limit:
            active.throttled = False
            return True
        return False

    # --- stopping ---

    def _stop(self, active: _Activation) -> None:
        """No more pops or replies for ``active``; ``_lock`` held.  Its
        requests inside the server become stale; its queued ones go."""
        active.stopped = True
        self._stale += active.running
        active.running = 0
        kept = deque(r for r in self._jobs if r.activation is not active)
        self._stats["abandoned"] += len(self._jobs) - len(kept)
        self._jobs = kept
        self._changed.notify_all()      # workers waiting at the door for this activation give up

    def _refuse(self, message: str) -> None:
        self._stats["errors"] += 1
        self._errors.warning(f"{self.name}: {message}")

    def _fail(self, error: Exception) -> None:
        """The driver broke the ring: ask for a reset (no lock held)."""
        with self._lock:
            self._stats["queue_errors"] += 1
        self._errors.warning(f"{self.name}: {error}; device needs reset")
        self.on_needs_reset(str(error))
