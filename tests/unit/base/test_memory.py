"""GuestMemory: regions, bounds-checked views, and the iovec arrays that
carry guest-supplied addresses to preadv/pwritev as raw host pointers."""

from __future__ import annotations

import ctypes
import struct
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmlite.arch.x86 import layout
from kvmlite.base.memory import DESC_TEST_LEN, IOVEC_ALIGN, GuestMemory, GuestMemoryError

SMALL = GuestMemory(16 << 20)
# Larger than the 32-bit hole: a low and a high region.  MAP_NORESERVE
# makes this address space only; the tests touch a few pages.
SPLIT = GuestMemory(layout.MMIO_HOLE_START + (64 << 20))
ODD = GuestMemory((40 << 20) - (20 << 12))   # low RAM that ends off a 64 KiB boundary


def host_address(memory: GuestMemory, addr: int) -> int:
    """Where ``view`` says guest ``addr`` lives in this process."""
    return ctypes.addressof(ctypes.c_char.from_buffer(memory.view(addr, 1)))


def pairs(iov: array) -> list[tuple[int, int]]:
    return list(zip(iov[0::2], iov[1::2]))


def test_regions_skip_the_32bit_hole() -> None:
    assert [(r.guest_addr, r.size) for r in SPLIT.regions] == [
        (0, layout.MMIO_HOLE_START), (layout.HIGH_RAM_START, 64 << 20)]
    assert SPLIT.low_end == layout.MMIO_HOLE_START
    with pytest.raises(GuestMemoryError):
        SPLIT.view(layout.MMIO_HOLE_START, 1)
    with pytest.raises(GuestMemoryError):
        SPLIT.view(layout.MMIO_HOLE_START - 8, 16)        # straddles the hole


def test_view_writes_reach_guest_memory_and_checks_bounds() -> None:
    SMALL.write(0x2000, b"kvmlite")
    assert SMALL.read(0x2000, 7) == b"kvmlite"
    SMALL.write_u16(0x3000, 0xBEEF)
    assert SMALL.read(0x3000, 2) == b"\xef\xbe" and SMALL.read_u16(0x3000) == 0xBEEF
    for addr, length in [(SMALL.size - 4, 8), (-1, 1), (0, -1), (SMALL.size, 0 + 1)]:
        with pytest.raises(GuestMemoryError):
            SMALL.view(addr, length)


def test_low_ram_starts_4gib_aligned_in_the_host_mapping() -> None:
    # What iovec's no-arithmetic path relies on.
    assert SMALL.regions[0].host_addr % IOVEC_ALIGN == 0
    assert host_address(SMALL, 0) == SMALL.regions[0].host_addr


def test_iovec_gives_the_host_address_of_each_buffer() -> None:
    addrs, lens = [0x1000, 0x5003, SMALL.size - 16], [16, 4096, 16]

    iov = SMALL.iovec(addrs, lens)

    assert iov.typecode == "Q"
    assert pairs(iov) == [(host_address(SMALL, a), n) for a, n in zip(addrs, lens)]


def test_iovec_high_region_buffers_translate_through_their_region() -> None:
    high = layout.HIGH_RAM_START + 0x3000
    addrs, lens = [0x2000, high], [512, 4096]

    iov = SPLIT.iovec(addrs, lens)

    assert pairs(iov) == [(host_address(SPLIT, 0x2000), 512), (host_address(SPLIT, high), 4096)]


def test_iovec_reaches_the_same_bytes_as_view() -> None:
    SMALL.write(0x7000, b"through the iovec")
    (base, length), = pairs(SMALL.iovec([0x7000], [17]))

    assert ctypes.string_at(base, length) == b"through the iovec"


@pytest.mark.parametrize(("addrs", "lens"), [
    ([0x1000, 16 << 20], [16, 1]),              # starts at the end of RAM
    ([0x1000, (16 << 20) - 8], [16, 16]),       # runs past the end
    ([-16], [16]),                              # negative address
    ([0x1000], [-1]),                           # negative length
    ([1 << 32], [16]),                          # above 4 GiB: no RAM there
    ([(1 << 64) - 8], [16]),                    # wraps a 64-bit address
    ([0x1000], [1 << 40]),                      # huge length
])
def test_iovec_refuses_any_buffer_outside_ram(addrs: list[int], lens: list[int]) -> None:
    with pytest.raises(GuestMemoryError):
        SMALL.iovec(addrs, lens)


def test_iovec_refuses_a_buffer_across_the_hole() -> None:
    with pytest.raises(GuestMemoryError):
        SPLIT.iovec([0x1000, layout.MMIO_HOLE_START - 16], [16, 32])


def test_iovec_of_nothing_is_empty() -> None:
    assert len(SMALL.iovec([], [])) == 0


def test_iovec_mismatched_lists_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        SMALL.iovec([0x1000], [])


def test_unaligned_mapping_takes_the_buffer_by_buffer_path(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = GuestMemory(1 << 20)
    monkeypatch.setattr(memory, "_iovec_high", None)     # as when the padded mapping was refused
    addrs, lens = [0x1000, 0x8000], [100, 200]

    assert pairs(memory.iovec(addrs, lens)) == [(host_address(memory, a), n) for a, n in zip(addrs, lens)]
    with pytest.raises(GuestMemoryError):
        memory.iovec([0x1000, 1 << 20], [1, 1])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-8, (1 << 33)), st.integers(-2, 1 << 25)), max_size=12))
def test_iovec_matches_view_for_any_buffers(buffers: list[tuple[int, int]]) -> None:
    """Random buffers: iovec succeeds exactly when view accepts every one,
    and then points where view does."""
    expected = []
    for addr, length in buffers:
        try:
            view = SPLIT.view(addr, length)
        except GuestMemoryError:
            expected = None
            break
        base = ctypes.addressof(ctypes.c_char.from_buffer(view)) if length else None
        expected.append((base, length))
    addrs, lens = [a for a, _ in buffers], [n for _, n in buffers]
    if expected is None:
        with pytest.raises(GuestMemoryError):
            SPLIT.iovec(addrs, lens)
        return
    got = pairs(SPLIT.iovec(addrs, lens))
    assert [n for _, n in got] == lens
    assert all(base is None or base == host for (base, _), (host, _) in zip(expected, got))


def test_io_buffers_few_are_views_many_are_an_iovec() -> None:
    from kvmlite.base.memory import IOVEC_SHORT
    few = SMALL.io_buffers([0x1000, 0x2000], [16, 32])
    many = SMALL.io_buffers([0x1000 + 64 * i for i in range(IOVEC_SHORT + 1)], [16] * (IOVEC_SHORT + 1))

    assert [len(v) for v in few] == [16, 32] and host_address(SMALL, 0x2000) == \
        ctypes.addressof(ctypes.c_char.from_buffer(few[1]))
    assert isinstance(many, array) and len(many) == 2 * (IOVEC_SHORT + 1)
    with pytest.raises(GuestMemoryError):
        SMALL.io_buffers([SMALL.size], [1])


# --- descriptor tables (virtqueue descriptors straight to an iovec) ---------

def descriptors(buffers: list[tuple[int, int]]) -> bytes:
    """Virtqueue descriptors for ``buffers``, with flags and next set as a
    driver would (they must not reach the iovec)."""
    return b"".join(struct.pack("<QIHH", addr, length, 3, i + 1) for i, (addr, length) in enumerate(buffers))


def test_descriptor_iovec_is_the_iovec_of_the_same_buffers() -> None:
    buffers = [(0x10000 + 0x2000 * i, 4096) for i in range(254)] + [(0x40, 1)]
    iov = SPLIT.descriptor_iovec(descriptors(buffers))

    assert SPLIT.descriptors_in_low_ram(descriptors(buffers))
    assert list(iov) == list(SPLIT.iovec([a for a, _ in buffers], [n for _, n in buffers]))


def test_descriptor_bytes_show_low_ram_except_in_its_last_mib() -> None:
    for memory in (SPLIT, GuestMemory(48 << 20)):
        untested = (memory.low_end - DESC_TEST_LEN) >> 16 << 16   # the first address the bytes cannot place
        assert memory.descriptors_in_low_ram(descriptors([(0, 1), (untested - 4096, DESC_TEST_LEN - 1)]))
        assert not memory.descriptors_in_low_ram(descriptors([(untested, 1)]))   # still RAM: exact check
        assert not memory.descriptors_in_low_ram(descriptors([(0x1000, DESC_TEST_LEN)]))
        assert not memory.descriptors_in_low_ram(descriptors([(1 << 32, 1)]))
        assert not memory.descriptors_in_low_ram(descriptors([(1 << 48, 1)]))
        assert memory.descriptor_iovec(descriptors([(untested, 1)]))[0] == host_address(memory, untested)
    assert not GuestMemory(1 << 20).descriptors_in_low_ram(descriptors([(0x1000, 1)]))  # too small to test


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.integers(0, (1 << 33)), st.integers((40 << 20) - (2 << 20), 40 << 20)),
                          st.integers(0, 1 << 25) | st.integers(0, 3 << 19)), max_size=12),
       st.sampled_from([SMALL, SPLIT, ODD]))
def test_descriptor_iovec_agrees_with_iovec_for_any_buffers(buffers: list[tuple[int, int]],
                                                            memory: GuestMemory) -> None:
    """Random buffers, either memory: the byte test never claims a buffer
    outside low RAM, and descriptor_iovec fails or succeeds exactly as
    iovec does, with the same result."""
    table = descriptors(buffers)
    addrs, lens = [a for a, _ in buffers], [n for _, n in buffers]
    if memory.descriptors_in_low_ram(table):
        assert all(a + n <= memory.low_end for a, n in buffers)
    try:
        expected = list(memory.iovec(addrs, lens))
    except GuestMemoryError:
        with pytest.raises(GuestMemoryError):
            memory.descriptor_iovec(table)
        return
    assert list(memory.descriptor_iovec(table)) == expected


@pytest.mark.parametrize("size", [SPLIT.size, 48 << 20, (40 << 20) - (20 << 12), 2 << 20])
def test_descriptor_bytes_place_addresses_exactly_to_64kib(size: int) -> None:
    """Around the limit, and for every value of the address's bytes 2 and
    3 near it, the byte test accepts exactly the 64 KiB units below it."""
    memory = GuestMemory(size) if size != SPLIT.size else SPLIT
    limit = (memory.low_end - DESC_TEST_LEN) >> 16
    units = set(range(max(0, limit - 600), limit + 600)) | {u << 8 | 0xFF for u in range(256)} | {u << 8 for u in range(256)}
    for unit in sorted(units):
        table = descriptors([(0x1000, 4096), (unit << 16 | 0xFFFF, 1), (0x2000, 4096)])
        assert memory.descriptors_in_low_ram(table) == (unit < limit), hex(unit)
