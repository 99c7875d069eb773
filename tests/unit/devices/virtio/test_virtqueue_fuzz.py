"""Random hostile rings: pop either returns a well-formed chain inside guest
RAM, returns None, or raises a QueueError; nothing else escapes."""

from __future__ import annotations

import struct

from hypothesis import event, given, settings
from hypothesis import strategies as st

from kvmlite.devices.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC
from kvmlite.devices.virtio.queue import U32_MAX, DescriptorChain, Queue, QueueError
from kvmlite.base.memory import DESC_TEST_LEN
from tests.unit.devices.virtio.fakedriver import RecordingMemory
from tests.unit.devices.virtio.hostile import RAM, HostileRing, hostile_rings, install

MEMORY = RecordingMemory(RAM)


def drain(queue: Queue) -> tuple[int, QueueError | None]:
    """Pop and complete chains the way a device does, until empty or broken."""
    popped = 0
    for _ in range(3 * queue.size + 3):
        try:
            chain = queue.pop(MEMORY)
        except QueueError as exc:
            return popped, exc
        if chain is None:
            break
        assert chain.readable_len == sum(len(v) for v in chain.readable) <= U32_MAX
        assert chain.writable_len == sum(len(v) for v in chain.writable) <= U32_MAX
        assert len(chain.readable) + len(chain.writable) <= 2 * queue.size
        queue.add_used(MEMORY, chain.head, min(chain.writable_len, 1))
        chain.release()
        popped += 1
    queue.enable_notification(MEMORY)
    queue.needs_notification(MEMORY)
    return popped, None


@settings(max_examples=500, deadline=None)
@given(hostile_rings(), st.sampled_from([0, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC]))
def test_pop_random_hostile_ring_never_escapes_or_leaves_ram(ring: HostileRing, features: int) -> None:
    queue = Queue(16)
    install(ring, MEMORY, queue)
    queue.configure(MEMORY, features)
    MEMORY.views.clear()

    popped, error = drain(queue)
    event(f"{'some' if popped else 'no'} chains, then {type(error).__name__ if error else 'empty'}")

    # RecordingMemory asserted every view lies in RAM; the queue never
    # hands out more chains than the driver made available.
    assert popped <= min(ring.avail_idx, ring.size)
    assert error is None or "\n" not in str(error)


# --- the whole-table path for indirect tables -------------------------------

LINEAR_TABLE = 0x60000
# Big enough for the byte test of GuestMemory.descriptors_in_low_ram, which
# places buffers below BYTE_TESTED; those above take the exact check.
BIG = RecordingMemory(64 << 20)
BYTE_TESTED = (BIG.low_end - DESC_TEST_LEN) >> 16 << 16


def linear_ish_tables() -> st.SearchStrategy[list[tuple[int, int, int, int]]]:
    """Indirect tables mostly laid out as Linux writes them (in order, NEXT
    on all but the last, readable first), with random damage."""
    @st.composite
    def table(draw: st.DrawFn) -> list[tuple[int, int, int, int]]:
        entries = draw(st.integers(1, 16))
        nread = draw(st.integers(0, entries))
        descs = []
        for i in range(entries):
            flags = (0 if i < nread else 2) | (1 if i < entries - 1 else 0)
            descs.append((draw(st.sampled_from([0x40000, 0x40040, BYTE_TESTED - 64, BYTE_TESTED + 64, BIG.size - 64])),
                          draw(st.sampled_from([0, 1, 64])),
                          flags, i + 1 if i < entries - 1 else draw(st.integers(0, 0xFFFF))))
        for _ in range(draw(st.integers(0, 2))):        # damage some fields
            i = draw(st.integers(0, entries - 1))
            addr, length, flags, nxt = descs[i]
            field = draw(st.sampled_from(["addr", "len", "flags", "next"]))
            if field == "addr":
                addr = draw(st.sampled_from([BIG.size - 1, BIG.size, 1 << 32, (1 << 64) - 16]))
            elif field == "len":
                length = draw(st.sampled_from([65, DESC_TEST_LEN - 64, DESC_TEST_LEN, 0xFFFF_FFFF]))
            elif field == "flags":
                flags = draw(st.integers(0, 0xFFFF))
            else:
                nxt = draw(st.integers(0, entries + 1))
            descs[i] = (addr, length, flags, nxt)
        return descs
    return table()


def pop_indirect(descs: list[tuple[int, int, int, int]], linear: bool) -> tuple | QueueError:
    """Pop one chain whose head points at ``descs`` as an indirect table;
    ``linear=False`` takes the walk even where the whole-table path applies."""
    from kvmlite.devices.virtio import queue as queue_module
    from tests.unit.devices.virtio.fakedriver import FakeDriver
    memory = BIG
    queue = Queue(16)
    driver = FakeDriver(memory, queue)
    for i, desc in enumerate(descs):
        driver.write_desc(LINEAR_TABLE, i, *desc)
    driver.write_desc(driver.desc_table, 0, LINEAR_TABLE, 16 * len(descs), 4)
    driver.publish(0)
    queue.configure(memory, VIRTIO_F_INDIRECT_DESC)
    saved = queue_module._linear_table
    if not linear:
        queue_module._linear_table = lambda *args: None
    try:
        chain = queue.pop(memory)
    except QueueError as exc:
        return exc
    finally:
        queue_module._linear_table = saved
    return described(chain)


def described(chain: DescriptorChain) -> tuple:
    """What a chain says: its buffers, and how many and how much each way.
    ``buffer(i)`` and, for a chain read whole, ``table`` must agree."""
    assert [chain.buffer(i) for i in range(chain.count)] == list(zip(chain.addrs, chain.lens))
    if chain.table is not None:
        assert list(BIG.descriptor_iovec(chain.table)) == list(BIG.iovec(chain.addrs, chain.lens))
    return chain.addrs, chain.lens, chain.nread, chain.readable_len, chain.writable_len


@settings(max_examples=500, deadline=None)
@given(linear_ish_tables())
def test_whole_table_path_agrees_with_the_walk(descs: list[tuple[int, int, int, int]]) -> None:
    from kvmlite.devices.virtio.queue import _linear_table
    table = BIG.view(LINEAR_TABLE, 16 * len(descs))
    for i, desc in enumerate(descs):
        table[16 * i:16 * i + 16] = struct.pack("<QIHH", *desc)
    fast = _linear_table(table, len(descs), BIG)
    walked = pop_indirect(descs, linear=False)
    event("walk" if fast is None else "whole table, exact check" if fast[1] is not None else "whole table, bytes")
    if fast is not None:
        # Everything the fast path accepts, the walk accepts identically.
        assert described(DescriptorChain(0, BIG, *fast[1:], table=fast[0])) == walked
    # And popping (which tries the fast path first) gives what the walk gives.
    popped = pop_indirect(descs, linear=True)
    if isinstance(walked, QueueError):
        assert type(popped) is type(walked)
    else:
        assert popped == walked


def test_linux_shaped_table_takes_the_whole_table_path() -> None:
    from kvmlite.devices.virtio.queue import _linear_table
    descs = [(0x40000, 16, 1, 1)] + [(0x41000 + 0x1000 * i, 4096, 3, i + 2) for i in range(8)] + [(0x40100, 1, 2, 0)]
    table = BIG.view(LINEAR_TABLE, 16 * len(descs))
    for i, desc in enumerate(descs):
        table[16 * i:16 * i + 16] = struct.pack("<QIHH", *desc)

    assert _linear_table(table, len(descs), BIG) == (table.tobytes(), None, None, 1, 16, 8 * 4096 + 1)
    chain = pop_indirect(descs, linear=True)
    assert chain == ([d[0] for d in descs], [d[1] for d in descs], 1, 16, 8 * 4096 + 1)


# --- pop_many: several chains at once ---------------------------------------

def chain_fields(chain: DescriptorChain) -> tuple:
    return chain.head, list(chain.addrs), list(chain.lens), chain.nread, chain.readable_len, chain.writable_len


@settings(max_examples=500, deadline=None)
@given(hostile_rings(), st.integers(1, 17), st.integers(0, 0xFFFF),
       st.sampled_from([0, VIRTIO_F_INDIRECT_DESC]))
def test_pop_many_agrees_with_pop_one_by_one(ring: HostileRing, limit: int, start: int, features: int) -> None:
    """The same chains, or the same error, as ``limit`` calls of pop, from
    any position of the avail ring (its entries wrap around)."""
    one, many = Queue(16), Queue(16)
    install(ring, MEMORY, one)
    for queue in (one, many):
        queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = (one.size, one.desc_table,
                                                                           one.avail_ring, one.used_ring)
        queue.configure(MEMORY, features)
        queue.next_avail = start
    MEMORY.write_u16(one.avail_ring + 2, (start + ring.avail_idx) & 0xFFFF)
    MEMORY.views.clear()

    expected: list[tuple] = []
    error: QueueError | None = None
    try:
        for _ in range(limit):
            chain = one.pop(MEMORY)
            if chain is None:
                break
            expected.append(chain_fields(chain))
    except QueueError as exc:
        error = exc
    try:
        got = [chain_fields(chain) for chain in many.pop_many(MEMORY, limit)]
    except QueueError as exc:
        assert error is not None and (type(exc), str(exc)) == (type(error), str(error))
        event("both raise")
    else:
        assert error is None and got == expected
        event(f"{'some' if got else 'no'} chains")
    assert many.next_avail == one.next_avail
