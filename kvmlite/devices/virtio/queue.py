"""Split virtqueues, device side (virtio 1.2 §2.7).

A :class:`Queue` holds only what the device needs to remember between
calls (the ring addresses the transport set, and its own ``next_avail`` /
``next_used`` positions); every operation takes the guest memory as an
argument, as rust-vmm's virtio-queue does, so a fake driver over a plain
:class:`~kvmlite.base.memory.GuestMemory` drives the tests.

Everything in the rings is written by the guest and is hostile: each value
is copied out of guest memory once, checked, and only then used.  A
malformed ring or chain raises one of the :class:`QueueError` subclasses
below (one-line messages); nothing here reads or writes outside guest RAM,
because every access goes through ``GuestMemory.view``, which bounds-checks.
A popped chain's buffers are only addresses and lengths, each checked to lie
inside one RAM region; whoever turns them into memory access checks again
(``GuestMemory.view`` for views, ``GuestMemory.iovec`` for host pointers).

Memory ordering (§2.7.7, §2.7.13).  The guest's vCPUs run on other physical
CPUs at the same time as this code.  kvmlite runs on x86, whose memory
model is TSO: loads are not reordered with other loads, stores are not
reordered with other stores, but a later load may be satisfied before an
earlier store is visible to other CPUs (the store buffer).  CPython adds no
reordering of its own between two statements: each is many C function
calls the C compiler cannot move memory accesses across.  So:

* publish used elements before the used idx: two stores, ordered by TSO
  (Linux's ``virtio_wmb`` is a compiler barrier on x86 for the same reason);
* read the avail idx before the ring entries and descriptors it covers: two
  loads, ordered by TSO (``virtio_rmb``);
* store-then-load pairs need a real fence: after publishing the used idx and
  before reading ``used_event``/the avail flags to decide whether to
  interrupt, and after publishing ``avail_event`` and before re-reading the
  avail idx.  :func:`full_barrier` provides it.

Ring indexes are 16-bit fields at 2-aligned addresses (the alignment is
checked in :meth:`Queue.configure`); ``GuestMemory.read_u16``/``write_u16``
access them with one 2-byte load or store, so the guest never sees a torn
index.

Threads: a queue belongs to one device, which serialises its calls (one
I/O thread, or under the device's lock).
"""

from __future__ import annotations

import functools
import re
import struct
import threading
from operator import add
from typing import Callable

from kvmlite.devices.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC
from kvmlite.devices.virtio.iov import Segments
from kvmlite.base.state import Reader, StateError
from kvmlite.base.memory import DESC_BYTES, GuestMemory, GuestMemoryError, descriptor_lists

# §2.7.5: struct virtq_desc flags
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
# §2.7.6: struct virtq_avail flags
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
# §2.7.8: struct virtq_used flags
VIRTQ_USED_F_NO_NOTIFY = 1

DESC_SIZE = DESC_BYTES        # §2.7.5: le64 addr, le32 len, le16 flags, le16 next
USED_ELEM_SIZE = 8            # §2.7.8: le32 id, le32 len
# §2.7 "Queue Alignment": descriptor table 16, available ring 2, used ring 4.
DESC_TABLE_ALIGN = 16
AVAIL_RING_ALIGN = 2
USED_RING_ALIGN = 4
MAX_QUEUE_SIZE = 32768        # §2.7: split queue size is a power of 2, at most 32768
NO_VECTOR = 0xFFFF            # §4.1.4.3: VIRTIO_MSI_NO_VECTOR
U32_MAX = 0xFFFF_FFFF
LINEAR_TABLE_MIN = 10         # below this many entries the walk is quicker than _linear_table

_DESC = struct.Struct("<QIHH")
_BUFFER = struct.Struct("<QI")     # the addr and len of a descriptor
_USED_ELEM = struct.Struct("<II")


# --- errors -----------------------------------------------------------------

class QueueError(Exception):
    """The driver broke the virtqueue contract; the message is one line."""


class RingAddressError(QueueError):
    """A ring is misaligned, outside guest RAM, or the queue size is invalid (§2.7)."""


class AvailIndexError(QueueError):
    """The avail idx moved ahead by more than the queue size (§2.7.6)."""


class DescriptorIndexError(QueueError):
    """A head or ``next`` index past the end of its descriptor table (§2.7.5)."""


class ChainLoopError(QueueError):
    """A chain longer than its table allows: it loops (§2.7.5.2)."""


class IndirectTableError(QueueError):
    """A malformed indirect descriptor (§2.7.5.3.1): bad length, NEXT set,
    not negotiated, or more entries than the queue size."""


class NestedIndirectError(IndirectTableError):
    """An indirect descriptor inside an indirect table (§2.7.5.3.1)."""


class DescriptorOrderError(QueueError):
    """A device-readable descriptor after a device-writable one (§2.7.4.2)."""


class DescriptorAddressError(QueueError):
    """A buffer or indirect table not wholly inside one RAM region."""


class ChainLengthError(QueueError):
    """The readable or writable bytes of a chain do not fit in 32 bits (§2.7.8)."""


# --- the fence --------------------------------------------------------------

_fence_lock = threading.Lock()


def full_barrier() -> None:
    """A full memory fence (``mfence`` semantics) for the store-then-load
    orderings described in the module docstring.

    Python has no fence primitive.  On x86 every locked instruction is a full
    barrier, and acquiring plus releasing an uncontended ``threading.Lock``
    executes at least one (CPython's lock is a POSIX semaphore or a pthread
    mutex; both are a ``lock cmpxchg``/``lock xadd`` on the fast path).
    """
    with _fence_lock:
        pass


# --- a popped chain ---------------------------------------------------------

class DescriptorChain:
    """One request: the head index and its buffers (§2.7.4, §2.7.5).

    The buffers are kept as the walk found them, guest-physical addresses
    and lengths, each checked to lie inside one RAM region; the first
    ``nread`` are device-readable (they come first, §2.7.4.2).  Devices
    that move bulk data take them as :class:`~kvmlite.devices.virtio.iov.Segments`
    (``readable_segments``/``writable_segments``) and hand them to
    ``GuestMemory.iovec``; the ``readable``/``writable`` properties give
    zero-copy ``memoryview`` slices of guest RAM instead, made on first use.
    Call :meth:`release` when done so no view outlives the request.

    A chain read whole from an indirect table (:func:`_linear_table`) also
    keeps ``table``, that table's bytes as read (one descriptor per buffer,
    in chain order), for ``GuestMemory.descriptor_iovec``; its ``addrs``
    and ``lens`` lists are only made when asked for.  Otherwise ``table``
    is None.
    """

    __slots__ = ("head", "memory", "table", "count", "nread", "readable_len", "writable_len",
                 "_addrs", "_lens", "_views")

    def __init__(self, head: int, memory: GuestMemory | None = None, addrs: list[int] | None = None,
                 lens: list[int] | None = None, nread: int = 0, readable_len: int = 0,
                 writable_len: int = 0, table: bytes | None = None) -> None:
        self.head = head
        self.memory = memory
        self.table = table
        self.nread = nread
        self.readable_len = readable_len
        self.writable_len = writable_len
        if table is not None and addrs is None:
            self._addrs = self._lens = None
            self.count = len(table) // DESC_SIZE
        else:
            self._addrs = addrs if addrs is not None else []
            self._lens = lens if lens is not None else []
            self.count = len(self._addrs)
        self._views: list[memoryview] | None = None

    @property
    def addrs(self) -> list[int]:
        if self._addrs is None:
            self._from_table()
        return self._addrs

    @property
    def lens(self) -> list[int]:
        if self._lens is None:
            self._from_table()
        return self._lens

    def _from_table(self) -> None:
        self._addrs, self._lens = descriptor_lists(self.table)

    def buffer(self, index: int) -> tuple[int, int]:
        """Buffer ``index`` (negative counts from the end): (address, length)."""
        if self._addrs is None:
            return _BUFFER.unpack_from(self.table, DESC_SIZE * (index % self.count))
        return self._addrs[index], self._lens[index]

    def __repr__(self) -> str:
        return (f"DescriptorChain(head={self.head}, readable={self.readable_len}B in {self.nread}, "
                f"writable={self.writable_len}B in {self.count - self.nread})")

    def readable_segments(self) -> Segments:
        return Segments(self.addrs[:self.nread], self.lens[:self.nread])

    def writable_segments(self) -> Segments:
        return Segments(self.addrs[self.nread:], self.lens[self.nread:])

    @property
    def readable(self) -> list[memoryview]:
        return self._all_views()[:self.nread]

    @property
    def writable(self) -> list[memoryview]:
        return self._all_views()[self.nread:]

    def _all_views(self) -> list[memoryview]:
        if self._views is None:
            if self.memory is None:
                return []
            view = self.memory.view
            self._views = [view(a, n) for a, n in zip(self.addrs, self.lens)]
        return self._views

    def release(self) -> None:
        """Drop the views made for this chain, and the way to make more."""
        views, self._views, self.memory = self._views, None, None
        for view in views or ():
            view.release()


# --- the queue --------------------------------------------------------------

class Queue:
    """One split virtqueue as the device sees it (§2.7).

    The transport owns the configuration fields (``size``, ``ready``, the
    three ring addresses, ``msix_vector``) and validates ``size`` against
    ``max_size``; the device calls :meth:`configure` at activation, then
    :meth:`pop`, :meth:`add_used`, :meth:`enable_notification` and
    :meth:`needs_notification`.
    """

    def __init__(self, max_size: int) -> None:
        if not 0 < max_size <= MAX_QUEUE_SIZE or max_size & (max_size - 1):
            raise ValueError(f"queue max size {max_size} is not a power of 2 in 1..{MAX_QUEUE_SIZE}")
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        """Back to power-on values (§4.1.4.3: queue_size reads as the maximum)."""
        self.size = self.max_size
        self.ready = False
        self.desc_table = 0
        self.avail_ring = 0
        self.used_ring = 0
        self.msix_vector = NO_VECTOR
        self.next_avail = 0
        self.next_used = 0
        self.event_idx = False
        self.indirect = False
        self._signalled_used: int | None = None

    # --- snapshots (kvmlite.base.state) ---

    def save_state(self) -> dict:
        """What the VMM remembers of this queue: the transport's registers
        (§4.1.4.3 / §4.2.2: size, enable, the three ring addresses, the
        MSI-X vector) and the device's ring positions (§2.7.6 last seen
        avail idx, §2.7.8 used idx shadow, §2.7.10 the used idx of the last
        interrupt decision).  The rings themselves are in guest RAM, which
        a snapshot saves whole."""
        return {"size": self.size, "ready": self.ready, "desc_table": self.desc_table,
                "avail_ring": self.avail_ring, "used_ring": self.used_ring,
                "msix_vector": self.msix_vector, "next_avail": self.next_avail,
                "next_used": self.next_used, "event_idx": self.event_idx,
                "indirect": self.indirect,
                "signalled_used": -1 if self._signalled_used is None else self._signalled_used}

    def restore_state(self, state: dict, part: str = "virtqueue") -> None:
        """Load :meth:`save_state`'s dict; every field is checked before any
        is set (StateError naming ``part``).  Ring addresses are checked
        against guest RAM by the transport, which knows the memory."""
        r = Reader(state, part)
        size = r.int("size", 1, self.max_size)
        if size & (size - 1):       # §2.7: a split queue's size is a power of 2
            raise StateError(f"{part}: size={size} is not a power of 2")
        values = {"size": size, "ready": r.bool("ready"), "event_idx": r.bool("event_idx"),
                  "indirect": r.bool("indirect"), "msix_vector": r.int("msix_vector", 0, NO_VECTOR),
                  "next_avail": r.int("next_avail", 0, 0xFFFF), "next_used": r.int("next_used", 0, 0xFFFF)}
        for field in ("desc_table", "avail_ring", "used_ring"):
            values[field] = r.int(field)
        signalled = r.int("signalled_used", -1, 0xFFFF)
        for field, value in values.items():
            setattr(self, field, value)
        self._signalled_used = None if signalled < 0 else signalled

    def signalled_used(self) -> int | None:
        """The used idx at the last interrupt decision (None: decide anew)."""
        return self._signalled_used

    def set_signalled_used(self, value: int | None) -> None:
        """Put back :meth:`signalled_used` after :meth:`configure` forgot it."""
        self._signalled_used = value

    # --- activation ---

    def configure(self, memory: GuestMemory, driver_features: int) -> None:
        """Check the layout the driver chose and take the negotiated ring
        features; raises :class:`RingAddressError`."""
        size = self.size
        if not 0 < size <= self.max_size or size & (size - 1):
            raise RingAddressError(f"queue size {size} is not a power of 2 in 1..{self.max_size}")
        _check_ring(memory, "descriptor table", self.desc_table, DESC_SIZE * size, DESC_TABLE_ALIGN)
        _check_ring(memory, "available ring", self.avail_ring, 6 + 2 * size, AVAIL_RING_ALIGN)
        _check_ring(memory, "used ring", self.used_ring, 6 + USED_ELEM_SIZE * size, USED_RING_ALIGN)
        self.event_idx = bool(driver_features & VIRTIO_F_EVENT_IDX)
        self.indirect = bool(driver_features & VIRTIO_F_INDIRECT_DESC)
        self._signalled_used = None

    # --- the available ring (§2.7.6) ---

    def _avail_idx(self, memory: GuestMemory) -> int:
        return memory.read_u16(self.avail_ring + 2)

    def pending(self, memory: GuestMemory) -> int:
        """How many chains the driver has made available and we have not popped."""
        try:
            avail_idx = self._avail_idx(memory)
        except GuestMemoryError as exc:
            raise RingAddressError(str(exc)) from None
        pending = (avail_idx - self.next_avail) & 0xFFFF
        if pending > self.size:
            raise AvailIndexError(f"avail idx {avail_idx} is {pending} ahead of {self.next_avail}, "
                                  f"more than the queue size {self.size}")
        return pending

    def pop(self, memory: GuestMemory) -> DescriptorChain | None:
        """The next available chain, or None when the driver has posted none.

        The avail entry is consumed even when its chain turns out malformed
        (the device is expected to stop and ask for a reset then)."""
        # The avail idx is read before the ring entry and the descriptors it
        # publishes: load-load order, which x86 keeps (module docstring).
        if self.pending(memory) == 0:
            return None
        slot = self.avail_ring + 4 + 2 * (self.next_avail % self.size)
        head = memory.read_u16(slot)
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        if head >= self.size:
            raise DescriptorIndexError(f"head descriptor {head} is outside a queue of {self.size}")
        return self._walk_chain(memory, head)

    def pop_many(self, memory: GuestMemory, limit: int) -> list[DescriptorChain]:
        """Up to ``limit`` available chains, in ring order; what :meth:`pop`
        called that often returns, for a device that takes buffers in bulk
        (a receive queue filling mergeable buffers).

        The avail idx and the ring entries are read once for all of them,
        and a chain of one device-writable descriptor inside low RAM (what
        Linux posts as a receive buffer) is taken without the walk; any
        other chain is walked and checked as :meth:`pop` walks it.  On a
        malformed chain this raises as :meth:`pop` does, the chains before
        it consumed with it (the device stops and asks for a reset)."""
        count = min(self.pending(memory), limit)
        if count <= 0:
            return []
        size, first = self.size, self.next_avail % self.size
        ring = self.avail_ring + 4
        try:
            if first + count <= size:
                heads = memory.view(ring + 2 * first, 2 * count).cast("H").tolist()
            else:
                heads = (memory.view(ring + 2 * first, 2 * (size - first)).cast("H").tolist()
                         + memory.view(ring, 2 * (first + count - size)).cast("H").tolist())
        except GuestMemoryError as exc:
            raise RingAddressError(str(exc)) from None
        descs = _table_view(memory, self.desc_table, size)
        unpack, low_end = _DESC.unpack_from, memory.low_end
        chains = []
        for head in heads:
            self.next_avail = (self.next_avail + 1) & 0xFFFF
            if head >= size:
                raise DescriptorIndexError(f"head descriptor {head} is outside a queue of {size}")
            addr, length, flags, _ = unpack(descs, DESC_SIZE * head)
            if flags == VIRTQ_DESC_F_WRITE and addr + length <= low_end:
                chains.append(DescriptorChain(head, memory, [addr], [length], 0, 0, length))
            else:
                chains.append(self._walk_chain(memory, head))
        return chains

    def _walk_chain(self, memory: GuestMemory, head: int) -> DescriptorChain:
        """Follow a chain from ``head`` (§2.7.5), through at most one indirect
        table (§2.7.5.3), checking every descriptor before trusting it.

        This is the hottest loop of every device (a 1 MiB Linux request is
        ~256 descriptors), so it is written flat: locals, one view of the
        descriptor table, no helper call per descriptor, and an indirect
        table laid out as Linux writes it is taken whole
        (:func:`_linear_table`)."""
        table, entries, index, indirect, visits = self.desc_table, self.size, head, False, 0
        addrs: list[int] = []
        lens: list[int] = []
        nread = -1                  # index of the first writable buffer, once there is one
        rlen = wlen = 0
        low_end = memory.low_end
        descs = _table_view(memory, table, entries)
        unpack = _DESC.unpack_from
        while True:
            addr, length, flags, nxt = unpack(descs, DESC_SIZE * index)
            if flags & VIRTQ_DESC_F_INDIRECT:
                entries = self._indirect_entries(memory, indirect, addr, length, flags)
                table, index, indirect, visits = addr, 0, True, 0
                descs = _table_view(memory, table, entries)
                if not addrs and entries >= LINEAR_TABLE_MIN:
                    whole = _linear_table(descs, entries, memory)
                    if whole is not None:
                        table, t_addrs, t_lens, nread, rlen, wlen = whole
                        return DescriptorChain(head, memory, t_addrs, t_lens, nread, rlen, wlen, table)
                continue
            visits += 1
            if visits > entries:
                raise ChainLoopError(f"chain from head {head} visits more than {entries} "
                                     f"descriptors{' in its indirect table' if indirect else ''}")
            if addr + length > low_end and not memory.contains(addr, length):
                raise DescriptorAddressError(f"buffer {addr:#x}+{length:#x} is not inside one guest RAM region")
            if flags & VIRTQ_DESC_F_WRITE:
                if nread < 0:
                    nread = len(addrs)
                wlen += length
            else:   # §2.7.4.2: device-readable buffers come first
                if nread >= 0:
                    raise DescriptorOrderError(f"readable descriptor after a writable one in chain {head}")
                rlen += length
            addrs.append(addr)
            lens.append(length)
            if rlen > U32_MAX or wlen > U32_MAX:
                raise ChainLengthError(f"chain {head} has more than 4 GiB of buffers")
            if not flags & VIRTQ_DESC_F_NEXT:
                return DescriptorChain(head, memory, addrs, lens, nread if nread >= 0 else len(addrs), rlen, wlen)
            if nxt >= entries:
                raise DescriptorIndexError(f"next descriptor {nxt} is outside a table of {entries}")
            index = nxt

    def _indirect_entries(self, memory: GuestMemory, indirect: bool, addr: int, length: int, flags: int) -> int:
        """Check the indirect table a descriptor points at (§2.7.5.3); the
        walk continues in it.  Returns its number of entries."""
        if indirect:
            raise NestedIndirectError("indirect descriptor inside an indirect table")
        if not self.indirect:
            raise IndirectTableError("indirect descriptor but VIRTIO_F_INDIRECT_DESC was not negotiated")
        if flags & VIRTQ_DESC_F_NEXT:
            raise IndirectTableError("indirect descriptor with VIRTQ_DESC_F_NEXT set")
        if length == 0 or length % DESC_SIZE:
            raise IndirectTableError(f"indirect table length {length} is not a non-zero multiple of {DESC_SIZE}")
        entries = length // DESC_SIZE
        if entries > self.size:
            raise IndirectTableError(f"indirect table of {entries} entries is longer than the queue size {self.size}")
        if addr + length > memory.low_end and not memory.contains(addr, length):
            raise DescriptorAddressError(f"indirect table {addr:#x}+{length:#x} is outside guest RAM")
        # The device MUST ignore VIRTQ_DESC_F_WRITE on this descriptor (§2.7.5.3.2).
        return entries

    # --- the used ring (§2.7.8) ---

    def add_used(self, memory: GuestMemory, head: int, length: int) -> None:
        """Return chain ``head`` to the driver with ``length`` bytes written."""
        if not 0 <= head < self.size or not 0 <= length <= U32_MAX:
            raise ValueError(f"bad used element {head}/{length}")
        slot = self.used_ring + 4 + USED_ELEM_SIZE * (self.next_used % self.size)
        try:
            _USED_ELEM.pack_into(memory.view(slot, USED_ELEM_SIZE), 0, head, length)
            self.next_used = (self.next_used + 1) & 0xFFFF
            # Store after the element's stores: TSO keeps them in order.
            memory.write_u16(self.used_ring + 2, self.next_used)
        except GuestMemoryError as exc:
            raise RingAddressError(str(exc)) from None

    # --- notification suppression (§2.7.7, §2.7.10) ---

    def enable_notification(self, memory: GuestMemory) -> bool:
        """Ask the driver to notify us about buffers after the ones we have
        popped; True when more are already available (then keep popping:
        the driver may have checked before our request became visible)."""
        try:
            if self.event_idx:
                # avail_event lives after the used ring entries (§2.7.8).
                memory.write_u16(self.used_ring + 4 + USED_ELEM_SIZE * self.size, self.next_avail)
            # We never set VIRTQ_USED_F_NO_NOTIFY, so there is nothing to clear.
            full_barrier()  # store (avail_event) then load (avail idx)
        except GuestMemoryError as exc:
            raise RingAddressError(str(exc)) from None
        return self.pending(memory) > 0

    def needs_notification(self, memory: GuestMemory) -> bool:
        """Whether the driver wants an interrupt for the used entries added
        since the last time this returned True (§2.7.7.2, §2.7.10)."""
        full_barrier()  # store (used idx) then load (used_event / flags)
        new = self.next_used
        try:
            if not self.event_idx:
                return not memory.read_u16(self.avail_ring) & VIRTQ_AVAIL_F_NO_INTERRUPT
            old, self._signalled_used = self._signalled_used, new
            if old is None:
                return True
            used_event = memory.read_u16(self.avail_ring + 4 + 2 * self.size)
        except GuestMemoryError as exc:
            raise RingAddressError(str(exc)) from None
        return vring_need_event(used_event, new, old)


def pop_writable(queue: "Queue", memory: GuestMemory, least: int,
                 refused: Callable[[DescriptorChain], None]) -> DescriptorChain | None:
    """The next chain that is device-writable only and holds at least
    ``least`` bytes, for a device that fills buffers (a receive queue).
    Any other chain is handed to ``refused`` (to count and log it), then
    returned unused (used length 0); the caller signals the used ring.  None
    when the ring is empty, with notifications re-enabled (§2.7.10)."""
    chains = pop_writable_many(queue, memory, least, refused, 1)
    return chains[0] if chains else None


def pop_writable_many(queue: "Queue", memory: GuestMemory, least: int,
                      refused: Callable[[DescriptorChain], None], limit: int) -> list[DescriptorChain]:
    """Up to ``limit`` chains as :func:`pop_writable` takes them, popped
    together (:meth:`Queue.pop_many`); at least one unless the ring has
    none fit (then empty, notifications re-enabled)."""
    while True:
        chains = queue.pop_many(memory, limit)
        if not chains:
            if queue.enable_notification(memory):
                continue
            return []
        fit = []
        for chain in chains:
            if chain.nread == 0 and chain.writable_len >= least:
                fit.append(chain)
                continue
            refused(chain)
            chain.release()
            queue.add_used(memory, chain.head, 0)
        if fit:
            return fit


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """§2.7.10: notify when ``event_idx`` lies in [old_idx, new_idx)."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


# One byte per descriptor from the low byte of its flags: r/w = readable or
# writable with NEXT, R/W = the same ending the chain, x = INDIRECT.
_KINDS = bytes((ord("x") if f & VIRTQ_DESC_F_INDIRECT else
                ord("rwRW"[bool(f & VIRTQ_DESC_F_WRITE) + 2 * (not f & VIRTQ_DESC_F_NEXT)]))
               for f in range(256))
_LINEAR = re.compile(rb"r*(?:R|(w*W))")


@functools.lru_cache(maxsize=32)
def _successors(entries: int) -> tuple[bytes, bytes]:
    """The low and the high bytes of the ``next`` fields of a table chained
    in order (1, 2, ..., entries - 1), as the entries but the last hold them."""
    nexts = range(1, entries)
    return bytes(i & 0xFF for i in nexts), bytes(i >> 8 for i in nexts)


def _linear_table(descs: memoryview, entries: int, memory: GuestMemory
                  ) -> tuple[bytes, list[int] | None, list[int] | None, int, int, int] | None:
    """An indirect table that is one chain in table order, every buffer in
    low RAM: (the table's bytes, addrs, lens, nread, readable bytes,
    writable bytes), read with a few C-level passes over bytes instead of a
    Python step per descriptor.  ``addrs`` and ``lens`` are None when the
    bytes alone showed every buffer inside low RAM (the usual case), lists
    when that took the exact check.  None when the table is laid out any
    other way; the descriptor-by-descriptor walk then takes it (and finds
    what is wrong, if anything).

    Linux fills indirect tables this way.  The table is copied out of guest
    memory once and every check and every later use is of that copy, so
    the guest changing the table meanwhile changes nothing.  Accepts
    exactly the tables the walk accepts with this layout: every entry used,
    NEXT on all but the last, ``next`` = i + 1, readable before writable,
    no INDIRECT, each side under 4 GiB."""
    table = descs.tobytes()
    match = _LINEAR.fullmatch(table[12::DESC_SIZE].translate(_KINDS))
    if match is None:
        return None
    next_low, next_high = _successors(entries)
    if table[14:-DESC_SIZE:DESC_SIZE] != next_low or table[15:-DESC_SIZE:DESC_SIZE] != next_high:
        return None
    addrs = lens = None
    if not memory.descriptors_in_low_ram(table):
        addrs, lens = descriptor_lists(table)
        if max(map(add, addrs, lens)) > memory.low_end:
            return None
    sizes = memoryview(table).cast("I")[2::4]
    nread = entries if match.start(1) < 0 else match.start(1)
    total = sum(sizes)
    if nread < entries // 2:
        rlen = sum(sizes[:nread])
        wlen = total - rlen
    else:
        wlen = sum(sizes[nread:])
        rlen = total - wlen
    if rlen > U32_MAX or wlen > U32_MAX:
        return None
    return table, addrs, lens, nread, rlen, wlen


def _table_view(memory: GuestMemory, table: int, entries: int) -> memoryview:
    """The descriptor table; each descriptor is read from it once."""
    try:
        return memory.view(table, DESC_SIZE * entries)
    except GuestMemoryError as exc:  # tables are checked first; this is a backstop
        raise DescriptorAddressError(str(exc)) from None


def _check_ring(memory: GuestMemory, what: str, addr: int, length: int, align: int) -> None:
    if addr % align:
        raise RingAddressError(f"{what} at {addr:#x} is not {align}-byte aligned")
    if not memory.contains(addr, length):
        raise RingAddressError(f"{what} {addr:#x}+{length:#x} is outside guest RAM")
