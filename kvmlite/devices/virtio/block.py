"""virtio-blk (virtio 1.2 §5.2) over a raw image.

One request queue.  ``queue_notify`` pops the available requests on the
thread that delivered the notification (the disk's own event loop,
``loop``, for an ioeventfd; a vCPU thread when the transport has none):
popping only reads guest memory, it never waits.  Reads or writes of
adjacent sectors are joined into one transfer (up to ``MERGE_MAX`` bytes
and IOV_MAX buffers, as QEMU's virtio-blk does).  Each transfer over
``INLINE_MAX`` bytes is submitted right there to the disk's io_uring
(:mod:`.uring`): the kernel's io-wq workers do the copies, several at once,
with no Python thread woken and no GIL wanted, and buffered writes to one
file (which run one at a time anyway, under the inode lock) queue there per
file.  Completions signal an eventfd served by the same loop (a device made
without one runs its own), which completes every finished request of one
wake-up together.  Where io_uring is refused, large transfers go to
``IO_THREADS`` I/O threads (``preadv`` releases the GIL, as with QEMU's
``aio=threads``).

Smaller requests: on the disk's loop thread, each plain read or write that
needs no device I/O (``RawDisk.try_read``/``try_write``: ``RWF_NOWAIT``, or
a file in memory) is done right there: a copy of a few KiB costs less than
handing it to another Python thread (a wake-up, then a wait for the GIL).
The rest (a flush, a discard, data not in the page cache, an unusual
framing), and every small request popped on a vCPU thread, go together to
one I/O thread, which runs them, completes them with one interrupt check,
and keeps popping from the ring itself while the driver keeps adding
requests.  A slow disk never stalls a vCPU or another device: the loop
is the disk's own.

Ordering: requests complete in any order, as virtio allows.  A flush makes
durable every write whose completion the driver saw before it submitted the
flush (Linux's block layer waits for those before it issues a flush): such
a write has finished (``pwritev`` returned, or its io_uring completion
arrived) before the flush is even popped, and ``fdatasync`` returns before
the flush's used entry is written.

Threads and locks:

* ``activate``/``queue_notify``/``reset`` come from the transport, under
  its lock, so popping never runs at the same time as a reset.
* Popping, the I/O threads and the io_uring reaper hold the activation's
  ``lock`` only while they touch the queue (pop, add_used) or the table of
  submitted transfers; the disk I/O runs without it, and they never hold it
  while they call the interrupt or ``on_needs_reset``.  ``reset`` marks the
  activation stopped and waits until no request is in flight (io_uring's
  included, which it reaps itself while it waits: the event loop may have
  stopped already): once it returns nothing touches guest memory for that
  activation any more.  ``reap_lock`` lets one thread at a time reap.

Errors: a malformed request (bad sector, length, type, flags) completes
with VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP; a malformed ring or a chain
with no status byte stops the device and asks the transport for
DEVICE_NEEDS_RESET.  Each is logged as one rate-limited line.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import select
import struct
import threading
from array import array
from dataclasses import dataclass, field
from typing import Callable

from kvmlite.devices.virtio.device import (VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
                                           VIRTIO_ID_BLOCK, VirtioDevice, VirtioInterrupt)
from kvmlite.devices.virtio.disk import IOV_MAX, SECTOR_SIZE, Buffers, RawDisk
from kvmlite.devices.virtio.iov import Segments
from kvmlite.devices.virtio.queue import DESC_SIZE, DescriptorAddressError, DescriptorChain, Queue, QueueError
from kvmlite.devices.virtio.ratelimit import RateLimitedLog
from kvmlite.devices.virtio.uring import IORING_OP_READV, IORING_OP_WRITEV, Uring
from kvmlite.base import eventfd
from kvmlite.base.eventloop import EventLoop
from kvmlite.base.state import Reader, StateError, pack_bytes
from kvmlite.base.memory import IOVEC_SHORT, GuestMemory, GuestMemoryError

log = logging.getLogger(__name__)

# §5.2.3 feature bits
VIRTIO_BLK_F_SIZE_MAX = 1 << 1
VIRTIO_BLK_F_SEG_MAX = 1 << 2
VIRTIO_BLK_F_RO = 1 << 5
VIRTIO_BLK_F_BLK_SIZE = 1 << 6
VIRTIO_BLK_F_FLUSH = 1 << 9
VIRTIO_BLK_F_DISCARD = 1 << 13
VIRTIO_BLK_F_WRITE_ZEROES = 1 << 14

# §5.2.6 request types and status values
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1

REQUEST_HEADER = struct.Struct("<IIQ")        # §5.2.6: le32 type, le32 reserved, le64 sector
SEGMENT = struct.Struct("<QII")               # virtio_blk_discard_write_zeroes
MAX_DISCARD_SECTORS = 1 << 23                 # 4 GiB per segment
MAX_DISCARD_SEG = 32
DISCARD_ALIGNMENT = 8                         # sectors: 4 KiB, the usual filesystem block
IO_THREADS = 8                                # large requests in flight per disk
INLINE_MAX = 64 << 10                         # smaller requests are run in batches
BATCH = 32                                    # small requests run and completed together
MERGE_MAX = 8 << 20                           # bytes in one merged transfer of adjacent requests
USE_IO_URING = True                           # large transfers through io_uring where the kernel allows
URING_ENTRIES = 256                           # as many as a queue can have requests in flight
RESET_POLL = 0.02                             # seconds between reaps while a reset waits for io_uring


class ChainFramingError(QueueError):
    """A request with no device-writable status byte: nothing can report it."""


class _RequestFailed(Exception):
    """Complete the current request with ``status``; the message is logged."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Activation:
    """What one DRIVER_OK..reset period of the device uses."""

    memory: GuestMemory | None
    queue: Queue | None
    interrupt: VirtioInterrupt | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False
    inflight: int = 0
    requests: "queue_mod.SimpleQueue[_Unit | None]" = field(default_factory=queue_mod.SimpleQueue)
    io_threads: list[threading.Thread] = field(default_factory=list)
    uring: Uring | None = None                  # large transfers, when the kernel allows
    completions: int = -1                       # the eventfd io_uring signals per completion
    loop: EventLoop | None = None               # where completions are reaped
    own_loop: bool = False                      # the device started ``loop`` (none was given)
    reap_lock: threading.Lock = field(default_factory=threading.Lock)
    submitted: dict[int, list[_Transfer]] = field(default_factory=dict)   # by io_uring tag
    next_tag: int = 1

    def __post_init__(self) -> None:
        self.idle = threading.Condition(self.lock)   # notified when inflight drops to 0


@dataclass
class _Transfer:
    """A read or write request that may be merged with its neighbours:
    its data is every buffer of ``chain`` but the first (the header) and
    the last (the status byte)."""

    chain: DescriptorChain
    write: bool
    sector: int
    sectors: int
    buffers: int
    nbytes: int

    @property
    def end(self) -> int:
        return self.sector + self.sectors


class _Batch(list):
    """Small requests to run one after the other and complete together."""


# What an I/O thread runs: a request on its own, a run of joined transfers, a batch.
_Unit = DescriptorChain | list[_Transfer] | _Batch


def _usual_framing(chain: DescriptorChain) -> bool:
    """Header, data and status each in buffers of their own, as Linux and
    every common driver frame a request: then no cutting is needed."""
    return (0 < chain.nread < chain.count and chain.buffer(0)[1] == REQUEST_HEADER.size
            and chain.buffer(-1)[1] == 1)


class VirtioBlock(VirtioDevice):
    device_type = VIRTIO_ID_BLOCK

    def __init__(self, disk: RawDisk, queue_size: int = 256, loop: EventLoop | None = None) -> None:
        super().__init__()
        self.disk = disk
        # The disk's own event loop: its doorbell (the transport's), its io_uring completions (without
        # one, the device runs a loop of its own for those) and its small reads and writes.
        self.loop = loop
        self.queue_max_sizes = (queue_size,)
        self._config = self._build_config(queue_size)
        self._active: _Activation | None = None
        self._errors = RateLimitedLog(log)
        self._stats_lock = threading.Lock()
        self._stats = dict.fromkeys(("read_requests", "write_requests", "flush_requests", "discard_requests",
                                     "write_zeroes_requests", "get_id_requests", "read_bytes", "write_bytes",
                                     "merged_requests", "notifications", "errors", "queue_errors"), 0)
        self._handlers: dict[int, Callable[[GuestMemory, int, Segments, Segments], int]] = {
            VIRTIO_BLK_T_IN: self._read, VIRTIO_BLK_T_OUT: self._write, VIRTIO_BLK_T_FLUSH: self._flush,
            VIRTIO_BLK_T_GET_ID: self._get_id, VIRTIO_BLK_T_DISCARD: self._discard,
            VIRTIO_BLK_T_WRITE_ZEROES: self._write_zeroes}

    # --- VirtioDevice ---

    def device_features(self) -> int:
        features = (VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX
                    | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH)
        if self.disk.read_only:
            return features | VIRTIO_BLK_F_RO
        return features | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES

    def _build_config(self, queue_size: int) -> bytes:
        """struct virtio_blk_config (§5.2.4), up to write_zeroes_may_unmap."""
        return struct.pack("<QII4xI8xBxHIIIIIB3x",
                           self.disk.capacity, 0, queue_size - 2, SECTOR_SIZE,
                           0, 1,                                       # writeback, num_queues
                           MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, DISCARD_ALIGNMENT,
                           MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, 1)    # write zeroes; may unmap

    def read_config(self, offset: int, data: memoryview) -> None:
        chunk = self._config[offset:offset + len(data)] if offset >= 0 else b""
        data[:len(chunk)] = chunk
        data[len(chunk):] = bytes(len(data) - len(chunk))

    def activate(self, memory: GuestMemory, queues: list[Queue], driver_features: int,
                 interrupt: VirtioInterrupt) -> None:
        self.reset()
        queue = queues[0]
        active = _Activation(memory, queue, interrupt)
        self._active = active
        if not queue.ready:
            return
        try:
            queue.configure(memory, driver_features)
        except QueueError as exc:
            self._stop_for_reset(active, exc)
            return
        name = f"virtio-blk:{os.path.basename(self.disk.path)}"
        for i in range(IO_THREADS):
            thread = threading.Thread(target=self._io_thread, args=(active,), name=f"{name}:io{i}", daemon=True)
            active.io_threads.append(thread)
            thread.start()
        if USE_IO_URING:
            self._open_uring(active, name)
        self._serve(active)

    def queue_notify(self, queue_index: int) -> None:
        active = self._active
        if queue_index == 0 and active is not None and active.io_threads:
            self._count("notifications", 1)
            self._serve(active)

    def reset(self) -> None:
        active, self._active = self._active, None
        if active is None:
            return
        with active.lock:
            active.stopped = True
        self._wait_inflight(active)
        with active.lock:
            active.memory = active.queue = active.interrupt = None
        for _ in active.io_threads:     # one stop marker per thread started
            active.requests.put(None)
        self._close_uring(active)

    def _wait_inflight(self, active: _Activation) -> None:
        """Wait until no request of ``active`` is in flight."""
        while True:
            with active.lock:
                if active.idle.wait_for(lambda: active.inflight == 0, RESET_POLL if active.uring else None):
                    return
            # Reap here too: the event loop may be stopped (VM shutdown), busy, or waiting for the
            # transport's lock, which our caller holds.  (poll, not select: the eventfd may be
            # numbered past FD_SETSIZE.)
            ready = select.poll()
            ready.register(active.completions, select.POLLIN)
            ready.poll(RESET_POLL * 1000)
            self._reap(active)

    # --- snapshots (kvmlite.base.state) ---

    def save_device_state(self) -> dict:
        """Finish every request in flight, then make the image durable
        (fdatasync): every write the driver has seen completed is on disk
        before the snapshot exists, as after a VIRTIO_BLK_T_FLUSH (§5.2.6).
        The state is the configuration space the driver read (§5.2.4),
        kept to check that the restored VM's disk is the same size."""
        active = self._active
        if active is not None:
            self._wait_inflight(active)
        if not self.disk.read_only:
            try:
                self.disk.flush()
            except OSError as exc:
                raise StateError(f"virtio-blk {self.disk.path}: flush failed: {exc}") from None
        return {"config": pack_bytes(self._config), "read_only": self.disk.read_only}

    def restore_device_state(self, state: dict) -> None:
        """Nothing to load (the fresh build opened the image); the saved
        configuration must be this device's, or the guest's view of the
        disk (capacity, queue depth) would change under it."""
        r = Reader(state, "virtio-blk")
        saved = r.bytes("config")
        if r.bool("read_only") != self.disk.read_only:
            raise StateError(f"virtio-blk: saved read_only={not self.disk.read_only} but "
                             f"{self.disk.path} is {'read-only' if self.disk.read_only else 'writable'}")
        if saved != self._config:
            old = struct.unpack_from("<Q", saved.ljust(8, b"\0"))[0]
            raise StateError(f"virtio-blk: saved configuration ({old} sectors, {len(saved)} bytes) "
                             f"differs from this disk's ({self.disk.capacity} sectors)")

    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self._stats)

    def _count(self, key: str, amount: int) -> None:
        with self._stats_lock:      # I/O threads count concurrently
            self._stats[key] += amount

    # --- lifetime beyond the ABC ---

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every request popped so far has completed (requests
        are popped by ``queue_notify`` itself)."""
        active = self._active
        if active is None:
            return True
        with active.lock:
            return active.idle.wait_for(lambda: active.inflight == 0, timeout)

    def close(self) -> None:
        """VM shutdown: stop the I/O threads, then close (and unlock) the
        image.  Call without the transport lock held."""
        active = self._active
        self.reset()
        if active is not None:
            for thread in active.io_threads:
                thread.join(timeout=10)
        self.disk.close()

    # --- popping (the notifying thread) and the I/O threads ---

    def _serve(self, active: _Activation, io_thread: bool = False) -> None:
        """Pop every available request and queue it for the I/O threads:
        large ones as units of their own (adjacent ones joined), small ones
        in batches, which an I/O thread serving the ring runs itself.
        §2.7.13.3: after re-enabling notifications, look again before
        returning."""
        while True:
            small, large, error, empty = self._pop_batch(active)
            if large:
                units = self._merge(large)
                if active.uring is not None:
                    units = self._submit(active, units)
                for unit in units:
                    active.requests.put(unit)
            if small and io_thread:
                self._complete(active, [(chain, *self._run(chain)) for chain in small])
            elif small and self._on_loop(active):
                done, rest = self._run_inline(small)
                if done:
                    self._complete(active, done)
                if rest:
                    active.requests.put(rest)
            elif small:
                active.requests.put(small)
            if error is not None:
                self._stop_for_reset(active, error)
                return
            if empty:
                return

    def _pop_batch(self, active: _Activation) -> tuple[_Batch, list[DescriptorChain], QueueError | None, bool]:
        small = _Batch()
        large: list[DescriptorChain] = []
        with active.lock:
            if active.stopped or active.memory is None or active.queue is None:
                return small, large, None, True
            try:
                while len(small) < BATCH:
                    chain = active.queue.pop(active.memory)
                    if chain is None:
                        # Re-enabled here, before anything is handed to an I/O thread:
                        # once woken, it waits for the GIL while this thread runs on.
                        if active.queue.enable_notification(active.memory):
                            continue
                        return small, large, None, True
                    active.inflight += 1
                    (small if chain.readable_len + chain.writable_len <= INLINE_MAX else large).append(chain)
            except QueueError as exc:
                return small, large, exc, True
        return small, large, None, False

    def _on_loop(self, active: _Activation) -> bool:
        """Whether this is the disk's event loop thread (which may run small
        reads and writes itself), not a vCPU or an I/O thread."""
        loop = self.loop or active.loop
        return loop is not None and loop.on_loop_thread()

    def _run_inline(self, chains: _Batch) -> tuple[list[tuple[DescriptorChain, int, QueueError | None]], _Batch]:
        """On the disk's event loop: run the plain reads and writes among
        ``chains`` that need no device I/O (``RawDisk.try_read``/
        ``try_write``: page-cache copies), and return them done, with the
        rest (any other request, data not cached, a short or failed
        transfer) for an I/O thread, which runs each through _handle."""
        reads: list[_Transfer] = []
        writes: list[_Transfer] = []
        rest = _Batch()
        try_read, try_write = self.disk.try_read, self.disk.try_write
        for chain in chains:
            t = self._transfer_of(chain)
            if t is None or t.buffers > IOVEC_SHORT:
                rest.append(chain)
                continue
            try:
                views = chain.memory.io_buffers(chain.addrs[1:-1], chain.lens[1:-1])
                n = (try_write if t.write else try_read)(views, t.sector * SECTOR_SIZE)  # type: ignore[arg-type]
            except (OSError, GuestMemoryError):
                n = None
            if n != t.nbytes:
                rest.append(chain)
            else:
                (writes if t.write else reads).append(t)
        done = []
        for run in (reads, writes):
            if run:
                done += self._transferred(run, sum(t.nbytes for t in run), merged=False)
        return done, rest

    def _run(self, chain: DescriptorChain) -> tuple[int, QueueError | None]:
        """Do one request's I/O (no lock held): (bytes written, ring error)."""
        try:
            return self._handle(chain), None
        except QueueError as exc:
            return 0, exc
        except GuestMemoryError as exc:     # buffers are checked at pop: a backstop
            return 0, DescriptorAddressError(str(exc))
        finally:
            chain.release()

    def _complete(self, active: _Activation, done: list[tuple[DescriptorChain, int, QueueError | None]]) -> None:
        """Put finished requests in the used ring; interrupt if the driver
        wants it.  A request that broke the ring stays in flight until the
        device has asked for its reset, so whoever waits for the device to
        be idle sees that request too."""
        notify, interrupt, error = False, None, None
        with active.lock:
            live = not active.stopped and active.queue is not None and active.memory is not None
            for chain, written, failure in done:
                if failure is None and live:
                    active.queue.add_used(active.memory, chain.head, written)
                error = error or failure
            if live:
                notify, interrupt = active.queue.needs_notification(active.memory), active.interrupt
            if error is None:
                active.inflight -= len(done)
                if not active.inflight:
                    active.idle.notify_all()
        if notify and interrupt is not None:
            interrupt.signal_used_queue(0)
        if error is not None:
            self._stop_for_reset(active, error)
            with active.lock:
                active.inflight -= len(done)
                if not active.inflight:
                    active.idle.notify_all()

    def _io_thread(self, active: _Activation) -> None:
        """Run units as they come.  After a batch of small requests, serve
        the ring from here while the driver keeps adding them (no
        notification, no hand-off for those).
        Not after a large request: its driver is rarely that quick, and
        finding the ring empty re-enables notifications."""
        while (unit := active.requests.get()) is not None:
            if isinstance(unit, DescriptorChain):
                self._complete(active, [(unit, *self._run(unit))])
            elif isinstance(unit, _Batch):
                self._complete(active, [(chain, *self._run(chain)) for chain in unit])
                self._serve(active, io_thread=True)
            else:
                self._complete(active, self._run_merged(unit))

    # --- merging (the notifying thread, no lock held) ---

    def _merge(self, chains: list[DescriptorChain]) -> list[_Unit]:
        """Large requests to run: reads and writes as runs of transfers, those
        of adjacent sectors joined (as QEMU's virtio-blk does: one system
        call and one hand-off instead of several); anything else as its
        chain, for _handle.  Each request's header is parsed once, here."""
        units: list[_Unit] = []
        transfers = []
        for chain in chains:
            transfer = self._transfer_of(chain)
            if transfer is None:
                units.append(chain)
            else:
                transfers.append(transfer)
        transfers.sort(key=lambda t: (t.write, t.sector))
        run: list[_Transfer] = []
        buffers = nbytes = 0
        for transfer in transfers:
            if run and (transfer.write != run[-1].write or transfer.sector != run[-1].end
                        or buffers + transfer.buffers > IOV_MAX or nbytes + transfer.nbytes > MERGE_MAX):
                units.append(run)
                run, buffers, nbytes = [], 0, 0
            run.append(transfer)
            buffers += transfer.buffers
            nbytes += transfer.nbytes
        if run:
            units.append(run)
        return units

    def _transfer_of(self, chain: DescriptorChain) -> _Transfer | None:
        """A read or write in the usual framing that is valid as it stands
        (whole sectors inside the disk, writable disk for a write): one
        that may be merged.  Anything else runs alone through _handle."""
        if not _usual_framing(chain):
            return None
        nread, count = chain.nread, chain.count
        rtype, _reserved, sector = REQUEST_HEADER.unpack(chain.memory.read(chain.buffer(0)[0], REQUEST_HEADER.size))
        write = rtype == VIRTIO_BLK_T_OUT
        # A read's only readable buffer is its header; a write's only writable one its status.
        if rtype == VIRTIO_BLK_T_IN and nread == 1:
            nbytes = chain.writable_len - 1
        elif write and nread == count - 1 and not self.disk.read_only:
            nbytes = chain.readable_len - REQUEST_HEADER.size
        else:
            return None
        if not nbytes or nbytes % SECTOR_SIZE or sector + nbytes // SECTOR_SIZE > self.disk.capacity:
            return None
        return _Transfer(chain, write, sector, nbytes // SECTOR_SIZE, count - 2, nbytes)

    def _run_merged(self, run: list[_Transfer]) -> list[tuple[DescriptorChain, int, QueueError | None]]:
        """One transfer for a run of adjacent requests; if it fails, each
        request runs alone through _handle, so each gets its own status."""
        total = sum(t.nbytes for t in run)
        try:
            op = self.disk.write if run[0].write else self.disk.read
            op(self._data_buffers(run[0].chain.memory, run), run[0].sector * SECTOR_SIZE, total)
        except (OSError, GuestMemoryError):
            return [(t.chain, *self._run(t.chain)) for t in run]
        return self._transferred(run, total)

    def _transferred(self, run: list[_Transfer], total: int,
                     merged: bool = True) -> list[tuple[DescriptorChain, int, QueueError | None]]:
        """Reads or writes (a run joined into one transfer when ``merged``)
        whose ``total`` bytes all moved: each request is OK."""
        write = run[0].write
        memory = run[0].chain.memory
        done = []
        for t in run:
            memory.write_u8(t.chain.buffer(-1)[0], VIRTIO_BLK_S_OK)
            done.append((t.chain, 1 if write else t.nbytes + 1, None))
            t.chain.release()
        requests, nbytes = ("write_requests", "write_bytes") if write else ("read_requests", "read_bytes")
        with self._stats_lock:
            stats = self._stats
            stats[requests] += len(run)
            stats[nbytes] += total
            if merged and len(run) > 1:
                stats["merged_requests"] += len(run)
        return done

    # --- io_uring (large transfers) ---

    def _open_uring(self, active: _Activation, name: str) -> None:
        """Give the activation an io_uring whose completions signal an
        eventfd reaped on the event loop (the device's own when it was
        given none); leave ``active.uring`` None where the kernel refuses."""
        uring = Uring.create(URING_ENTRIES)
        if uring is None:
            return
        completions = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            uring.register_eventfd(completions)
        except OSError as exc:
            log.info("virtio-blk %s: io_uring without eventfd (%s); using the I/O threads", self.disk.path, exc)
            uring.close()
            os.close(completions)
            return
        loop = self.loop
        if loop is None:
            loop = EventLoop(f"{name}:uring")
            loop.start()
            active.own_loop = True
        active.uring, active.completions, active.loop = uring, completions, loop
        loop.add_reader(completions, lambda: self._reap(active))

    def _close_uring(self, active: _Activation) -> None:
        """After the last completion: stop reaping and close the ring."""
        loop, uring = active.loop, active.uring
        if uring is None or loop is None:
            return
        with active.reap_lock:      # a reap under way finishes first; later ones see no ring
            active.uring = None
        loop.remove_reader(active.completions)
        uring.close()
        os.close(active.completions)
        if active.own_loop:
            loop.close()

    def _submit(self, active: _Activation, units: list[_Unit]) -> list[_Unit]:
        """Hand the runs of reads and writes among ``units`` to io_uring, with
        one system call (the notifying thread or an I/O thread); what it
        does not take is returned, for the I/O threads."""
        uring = active.uring
        assert uring is not None
        rest: list[_Unit] = []
        taken: list[tuple[list[_Transfer], array]] = []
        for unit in units:
            if not isinstance(unit, list):
                rest.append(unit)
                continue
            try:
                taken.append((unit, self._data_buffers(unit[0].chain.memory, unit, iovec=True)))  # type: ignore
            except GuestMemoryError:
                rest.append(unit)       # the I/O path makes it a ring error
        if not taken:
            return rest
        with active.lock:               # the event loop and an I/O thread may both submit
            first = active.next_tag
            active.next_tag += len(taken)
            runs = {first + i: run for i, (run, _iov) in enumerate(taken)}
            active.submitted.update(runs)
        fd = self.disk.fd
        entries = [(IORING_OP_WRITEV if run[0].write else IORING_OP_READV, fd, iov, run[0].sector * SECTOR_SIZE,
                    first + i) for i, (run, iov) in enumerate(taken)]
        try:
            uring.submit_all(entries)
        except OSError as exc:
            with active.lock:
                for tag in runs:
                    del active.submitted[tag]
            self._errors.warning(f"virtio-blk {self.disk.path}: io_uring refused a transfer ({exc}); "
                                 "using the I/O threads")
            return units
        return rest

    def _reap(self, active: _Activation) -> None:
        """Complete the transfers io_uring finished (the event loop, or a
        reset waiting for them), with one interrupt check for all.  One that
        moved fewer bytes than asked, or failed, goes to the I/O threads, to
        run again through the disk (which finishes a short transfer, or
        gives each request its own status): the event loop never waits for
        the disk."""
        with active.reap_lock:
            uring = active.uring
            if uring is None:
                return
            eventfd.drain(active.completions)
            finished = uring.reap()
            if not finished:
                return
            with active.lock:
                runs = [(active.submitted.pop(tag), result) for tag, result in finished]
        done = []
        for run, result in runs:
            total = sum(t.nbytes for t in run)
            if result == total:
                done += self._transferred(run, total)
            else:
                active.requests.put(run)
        if done:
            self._complete(active, done)
        self._serve(active)         # what the driver added meanwhile (its notification then finds none)

    @staticmethod
    def _data_buffers(memory: GuestMemory, run: list[_Transfer], iovec: bool = False) -> Buffers:
        """The data buffers of a run of requests, in order, for one system
        call: straight from the descriptor tables' bytes when every request
        was read whole from one (Linux's requests), else from the lists; an
        iovec array when ``iovec`` (else whichever form is cheaper)."""
        tables = [t.chain.table for t in run]
        if None not in tables:
            return memory.descriptor_iovec(b"".join([table[DESC_SIZE:-DESC_SIZE] for table in tables]))
        addrs: list[int] = []
        lens: list[int] = []
        for t in run:                   # list += list: a C-level copy, not a step per buffer
            addrs += t.chain.addrs[1:-1]
            lens += t.chain.lens[1:-1]
        return memory.iovec(addrs, lens) if iovec else memory.io_buffers(addrs, lens)

    def _stop_for_reset(self, active: _Activation, error: QueueError) -> None:
        """The driver broke the ring: stop serving and ask for a reset (no lock held)."""
        with active.lock:
            active.stopped = True
        self._count("queue_errors", 1)
        self._errors.warning(f"virtio-blk {self.disk.path}: {error}; device needs reset")
        self.on_needs_reset(str(error))

    # --- requests (I/O threads, no lock held) ---

    def _handle(self, chain: DescriptorChain) -> int:
        """Execute one request; returns the bytes written to the guest."""
        memory = chain.memory
        addrs, lens, nread = chain.addrs, chain.lens, chain.nread
        if _usual_framing(chain):
            header = memory.read(addrs[0], REQUEST_HEADER.size)
            status_addr = addrs[-1]
            data_in = Segments(addrs[1:nread], lens[1:nread])
            data_out = Segments(addrs[nread:-1], lens[nread:-1])
        else:
            header, status_addr, data_in, data_out = self._frame(chain)
        try:
            if len(header) < REQUEST_HEADER.size:
                raise _RequestFailed(VIRTIO_BLK_S_IOERR, f"request {chain.head} has a short header")
            rtype, _reserved, sector = REQUEST_HEADER.unpack(header)
            handler = self._handlers.get(rtype)
            if handler is None:
                raise _RequestFailed(VIRTIO_BLK_S_UNSUPP, f"unsupported request type {rtype}")
            written = handler(memory, sector, data_in, data_out)
            code = VIRTIO_BLK_S_OK
        except _RequestFailed as failure:
            code, written = failure.status, 0
            self._count("errors", 1)
            self._errors.warning(f"virtio-blk {self.disk.path}: {failure}")
        memory.write_u8(status_addr, code)
        return written + 1

    @staticmethod
    def _frame(chain: DescriptorChain) -> tuple[bytes, int, Segments, Segments]:
        """Header bytes, status address, data to the device, data from it:
        cut at byte offsets, whatever the buffers (§2.7.4: no framing
        assumptions)."""
        data_out, status = chain.writable_segments().split_tail(1)
        if not status:
            raise ChainFramingError(f"request {chain.head} has no device-writable status byte")
        header, data_in = chain.readable_segments().split_at(REQUEST_HEADER.size)
        return header.gather(chain.memory), status.addrs[0], data_in, data_out

    def _io_range(self, sector: int, nbytes: int) -> int:
        """Byte offset of a transfer, after checking it against the capacity."""
        if nbytes % SECTOR_SIZE:
            raise _RequestFailed(VIRTIO_BLK_S_IOERR, f"transfer of {nbytes} bytes is not whole sectors")
        if sector + nbytes // SECTOR_SIZE > self.disk.capacity:
            raise _RequestFailed(VIRTIO_BLK_S_IOERR, f"sectors {sector}+{nbytes // SECTOR_SIZE} are beyond "
                                                     f"the capacity {self.disk.capacity}")
        return sector * SECTOR_SIZE

    def _read(self, memory: GuestMemory, sector: int, data_in: Segments, data_out: Segments) -> int:
        self._count("read_requests", 1)
        nbytes = data_out.total()
        offset = self._io_range(sector, nbytes)
        self._disk_op("read", self.disk.read, memory.io_buffers(data_out.addrs, data_out.lens), offset, nbytes)
        self._count("read_bytes", nbytes)
        return nbytes

    def _write(self, memory: GuestMemory, sector: int, data_in: Segments, data_out: Segments) -> int:
        self._count("write_requests", 1)
        self._refuse_if_read_only("write")
        nbytes = data_in.total()
        offset = self._io_range(sector, nbytes)
        self._disk_op("write", self.disk.write, memory.io_buffers(data_in.addrs, data_in.lens), offset, nbytes)
        self._count("write_bytes", nbytes)
        return 0

    def _flush(self, memory: GuestMemory, sector: int, data_in: Segments, data_out: Segments) -> int:
        self._count("flush_requests", 1)
        if not self.disk.read_only:
            self._disk_op("flush", self.disk.flush)
        return 0

    def _get_id(self, memory: GuestMemory, sector: int, data_in: Segments, data_out: Segments) -> int:
        self._count("get_id_requests", 1)
        return data_out.scatter(memory, self.disk.serial)

    def _discard(self, memory: GuestMemory, sector: int, data_in: Segments, data_out: Segments) -> int:
        self._count("discard_requests", 1)
        self._refuse_if_read_only("discard")
        for offset, length, _unmap in self._segments(memory, data_in, allow_unmap=False):
            self._disk_op("discard", self.disk.discard, offset, length)
        return 0

    def _write_zeroes(self, memory: GuestMemory, sector: int, data_in: Segments, data_out: Segments) -> int:
        self._count("write_zeroes_requests", 1)
        self._refuse_if_read_only("write zeroes")
        for offset, length, unmap in self._segments(memory, data_in, allow_unmap=True):
            self._disk_op("write zeroes", self.disk.write_zeroes, offset, length, unmap)
        return 0

    def _segments(self, memory: GuestMemory, data_in: Segments, allow_unmap: bool) -> list[tuple[int, int, bool]]:
        """Parse and check every discard/write-zeroes segment before acting on any."""
        nbytes = data_in.total()
        if nbytes == 0 or nbytes % SEGMENT.size or nbytes // SEGMENT.size > MAX_DISCARD_SEG:
            raise _RequestFailed(VIRTIO_BLK_S_IOERR, f"{nbytes} bytes of segments: not 1..{MAX_DISCARD_SEG} "
                                                     f"segments of {SEGMENT.size}")
        raw = data_in.gather(memory)
        segments = []
        for sector, count, flags in SEGMENT.iter_unpack(raw):
            # §5.2.6.2: unknown flags, or unmap on a discard, are UNSUPP.
            if flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP or (flags and not allow_unmap):
                raise _RequestFailed(VIRTIO_BLK_S_UNSUPP, f"segment flags {flags:#x} not supported")
            if count > MAX_DISCARD_SECTORS:
                raise _RequestFailed(VIRTIO_BLK_S_IOERR, f"segment of {count} sectors exceeds {MAX_DISCARD_SECTORS}")
            offset = self._io_range(sector, count * SECTOR_SIZE)
            segments.append((offset, count * SECTOR_SIZE, bool(flags)))
        return segments

    def _refuse_if_read_only(self, what: str) -> None:
        # §5.2.6.2: IOERR for a write to a read-only device, and write nothing.
        if self.disk.read_only:
            raise _RequestFailed(VIRTIO_BLK_S_IOERR, f"{what} refused: the disk is read-only")

    def _disk_op(self, what: str, op: Callable[..., None], *args: object) -> None:
        try:
            op(*args)
        except OSError as exc:
            raise _RequestFailed(VIRTIO_BLK_S_IOERR, f"{what} failed: {exc.strerror or exc}") from None
