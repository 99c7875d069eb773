"""Scatter-gather lists of guest buffers (Segments) over a real GuestMemory."""

from __future__ import annotations

import pytest

from kvmlite.devices.virtio.iov import Segments
from kvmlite.base.memory import GuestMemory

MEMORY = GuestMemory(1 << 20)


def place(*chunks: bytes) -> Segments:
    """Put each chunk in its own guest buffer (a gap between them)."""
    addrs, lens, addr = [], [], 0x1000
    for chunk in chunks:
        MEMORY.write(addr, chunk)
        addrs.append(addr)
        lens.append(len(chunk))
        addr += len(chunk) + 0x100
    return Segments(addrs, lens)


def contents(segments: Segments) -> bytes:
    return segments.gather(MEMORY)


@pytest.mark.parametrize(("n", "head", "tail"), [
    (0, b"", b"abcdef"), (2, b"ab", b"cdef"), (3, b"abc", b"def"), (4, b"abcd", b"ef"), (9, b"abcdef", b""),
])
def test_split_at_offset_cuts_across_buffers(n: int, head: bytes, tail: bytes) -> None:
    first, rest = place(b"abc", b"def").split_at(n)

    assert (contents(first), contents(rest)) == (head, tail)
    assert first.total() + rest.total() == 6


def test_split_at_cuts_inside_a_buffer_at_the_right_address() -> None:
    segments = place(b"abc", b"def")
    first, rest = segments.split_at(4)

    assert first == Segments([segments.addrs[0], segments.addrs[1]], [3, 1])
    assert rest == Segments([segments.addrs[1] + 1], [2])


def test_split_tail_last_byte_returns_status() -> None:
    data, status = place(b"abc", b"dS").split_tail(1)

    assert (contents(data), contents(status)) == (b"abcd", b"S")
    assert len(status) == 1


def test_split_tail_empty_returns_no_status() -> None:
    data, status = Segments().split_tail(1)

    assert (len(data), len(status)) == (0, 0)


def test_split_tail_only_empty_buffers_gives_empty_tail() -> None:
    # A chain whose only writable buffer is empty has no status byte.
    head, tail = place(b"").split_tail(1)
    assert (len(head), len(tail)) == (0, 0)


def test_split_tail_skips_trailing_empty_buffers() -> None:
    head, tail = place(b"abcd", b"").split_tail(1)
    assert (contents(head), contents(tail)) == (b"abc", b"d")


def test_split_tail_across_buffers() -> None:
    head, tail = place(b"ab", b"c", b"").split_tail(2)
    assert (contents(head), contents(tail)) == (b"a", b"bc")
    assert len(tail) == 2


def test_gather_limit_copies_prefix() -> None:
    assert place(b"abc", b"def").gather(MEMORY, 4) == b"abcd"


@pytest.mark.parametrize("limit", [0, 1, 3, 4, 6, 9])
def test_gather_limit_within_or_past_the_first_buffer_gives_the_prefix(limit: int) -> None:
    assert place(b"abc", b"def").gather(MEMORY, limit) == b"abcdef"[:limit]


def test_scatter_segments_fills_in_order_and_returns_count() -> None:
    target = place(b"\0\0", b"\0\0\0")

    copied = target.scatter(MEMORY, b"1234567")

    assert (copied, contents(target)) == (5, b"12345")
