"""Hypothesis strategies for hostile virtqueues: random descriptor tables,
flags, next pointers, lengths, addresses, indirect tables and avail indexes
laid out in guest memory."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import strategies as st

from kvmlite.devices.virtio.queue import Queue
from kvmlite.base.memory import GuestMemory
from tests.unit.devices.virtio.fakedriver import FakeDriver

RAM = 1 << 20
HEAP = 0x40000            # buffers: 8 slots of 64 bytes
TABLES = 0x50000          # indirect tables: 4 tables, 0x400 apart
SLOT = 64
BLK_TYPES = [0, 1, 4, 8, 11, 13, 2, 0xFFFF_FFFF]

Desc = tuple[int, int, int, int]



def weighted(*choices: tuple[int, st.SearchStrategy[int]]) -> st.SearchStrategy[int]:
    """Draw from one of ``choices``, picked with the given integer weights."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(pool) - 1).flatmap(lambda i: pool[i])


heap_addresses = st.sampled_from([HEAP + SLOT * i for i in range(8)])
table_addresses = st.sampled_from([TABLES + 0x400 * i for i in range(4)])
addresses = weighted(
    (6, heap_addresses), (2, table_addresses),
    (1, st.sampled_from([0, RAM - 1, RAM - 16, RAM, RAM + 1, (1 << 64) - 1, (1 << 64) - 16])),
    (1, st.integers(0, RAM - 1)), (1, st.integers(0, (1 << 64) - 1)),
)
lengths = weighted(
    (6, st.sampled_from([1, 16, 17, 32, 48, 64])), (2, st.integers(0, 1024)),
    (1, st.sampled_from([0, 512, 4096, RAM, (1 << 32) - 1])), (1, st.integers(0, (1 << 32) - 1)),
)
flag_values = weighted((8, st.integers(0, 3)), (2, st.integers(4, 7)), (1, st.integers(0, 0xFFFF)))


def indexes(entries: int) -> st.SearchStrategy[int]:
    """A descriptor index: usually inside a table of ``entries``."""
    return weighted((8, st.integers(0, entries - 1)), (1, st.integers(entries, entries + 2)),
                    (1, st.integers(0, 0xFFFF)))


@st.composite
def descriptors(draw: st.DrawFn, entries: int) -> Desc:
    nxt = draw(indexes(entries))
    return draw(addresses), draw(lengths), draw(flag_values), nxt


@st.composite
def heap_slots(draw: st.DrawFn) -> bytes:
    """One 64-byte buffer: random, or a plausible virtio-blk header + segment."""
    if draw(st.booleans()):
        return draw(st.binary(min_size=SLOT, max_size=SLOT))
    header = struct.pack("<IIQ", draw(st.sampled_from(BLK_TYPES)), 0, draw(st.integers(0, 200)))
    segment = struct.pack("<QII", draw(st.integers(0, 200)), draw(st.integers(0, 300)), draw(st.integers(0, 3)))
    return (header + segment).ljust(SLOT, b"\0")


@dataclass
class HostileRing:
    size: int
    table: list[Desc]
    indirect_tables: list[list[Desc]]
    avail_entries: list[int]
    avail_idx: int
    avail_flags: int
    used_event: int
    heap: list[bytes]


@st.composite
def hostile_rings(draw: st.DrawFn) -> HostileRing:
    size = draw(st.sampled_from([1, 2, 4, 8, 16]))
    tables = [draw(st.lists(descriptors(8), min_size=1, max_size=8)) for _ in range(4)]
    return HostileRing(
        size=size,
        table=[draw(descriptors(size)) for _ in range(size)],
        indirect_tables=tables,
        avail_entries=[draw(indexes(size)) for _ in range(size)],
        avail_idx=draw(weighted((9, st.integers(1, size)), (1, st.integers(0, 0xFFFF)))),
        avail_flags=draw(st.integers(0, 3)),
        used_event=draw(st.integers(0, 0xFFFF)),
        heap=[draw(heap_slots()) for _ in range(8)],
    )


def install(ring: HostileRing, memory: GuestMemory, queue: Queue) -> FakeDriver:
    """Lay ``ring`` out in ``memory`` as the driver of ``queue``."""
    driver = FakeDriver(memory, queue, size=ring.size)
    for i, desc in enumerate(ring.table):
        driver.write_desc(driver.desc_table, i, *desc)
    for t, table in enumerate(ring.indirect_tables):
        for i, desc in enumerate(table):
            driver.write_desc(TABLES + 0x400 * t, i, *desc)
    for i, data in enumerate(ring.heap):
        memory.write(HEAP + SLOT * i, data)
    for i, head in enumerate(ring.avail_entries):
        memory.write_u16(driver.avail_ring + 4 + 2 * i, head)
    driver.set_avail_flags(ring.avail_flags)
    driver.set_used_event(ring.used_event)
    driver.set_avail_idx(ring.avail_idx)
    return driver


@dataclass
class BlkRequest:
    rtype: int
    sector: int
    out: bytes
    in_len: int
    status: bool       # False: no status byte (a framing error)
    indirect: bool


@st.composite
def blk_requests(draw: st.DrawFn) -> BlkRequest:
    """A virtio-blk request with hostile values but a plausible shape."""
    rtype = draw(st.sampled_from(BLK_TYPES))
    out_len = draw(st.sampled_from([0, 16, 32, 100, 512, 1024]))
    out = draw(st.binary(min_size=out_len, max_size=out_len)) if rtype != 1 else bytes(out_len)
    sector = draw(weighted((4, st.integers(0, 250)), (1, st.integers(0, (1 << 64) - 1))))
    in_len = draw(st.sampled_from([0, 1, 20, 100, 512, 1024]))
    has_status = draw(weighted((9, st.just(1)), (1, st.just(0)))) == 1
    return BlkRequest(rtype, sector, out, in_len, has_status, draw(st.booleans()))


def post_blk(driver: FakeDriver, request: BlkRequest) -> None:
    header = struct.pack("<IIQ", request.rtype, 0, request.sector)
    readable = [header] + ([request.out] if request.out else [])
    writable = ([request.in_len] if request.in_len else []) + ([1] if request.status else [])
    driver.add(readable, writable, indirect=request.indirect)
