"""Scatter-gather helpers over memoryview lists."""

from __future__ import annotations

import pytest

from kvmlite.devices.virtio import iov


def views(*chunks: bytes) -> list[memoryview]:
    return [memoryview(bytearray(c)) for c in chunks]


@pytest.mark.parametrize(("n", "head", "tail"), [
    (0, b"", b"abcdef"), (2, b"ab", b"cdef"), (3, b"abc", b"def"), (4, b"abcd", b"ef"), (9, b"abcdef", b""),
])
def test_split_at_offset_cuts_across_buffers(n: int, head: bytes, tail: bytes) -> None:
    first, rest = iov.split_at(views(b"abc", b"def"), n)

    assert (b"".join(first), b"".join(rest)) == (head, tail)


def test_split_tail_last_byte_returns_status_view() -> None:
    data, status = iov.split_tail(views(b"abc", b"dS"), 1)

    assert (b"".join(data), b"".join(status)) == (b"abcd", b"S")


def test_split_tail_empty_returns_no_status() -> None:
    data, status = iov.split_tail([], 1)

    assert (data, status) == ([], [])


def test_split_at_slices_share_memory() -> None:
    buffers = views(b"abcdef")
    head, _ = iov.split_at(buffers, 3)

    head[0][:] = b"XYZ"

    assert bytes(buffers[0]) == b"XYZdef"


def test_scatter_longer_data_fills_buffers_and_returns_count() -> None:
    target = views(b"\0\0", b"\0\0\0")

    copied = iov.scatter(target, b"1234567")

    assert (copied, b"".join(target)) == (5, b"12345")


def test_gather_limit_copies_prefix() -> None:
    assert iov.gather(views(b"abc", b"def"), 4) == b"abcd"


def test_advance_drops_consumed_and_empty_buffers() -> None:
    rest = iov.advance(views(b"ab", b"", b"cde"), 3)

    assert [bytes(v) for v in rest] == [b"de"]


def test_split_tail_only_empty_buffers_gives_empty_tail() -> None:
    # A chain whose only writable buffer is empty has no status byte.
    head, tail = iov.split_tail([memoryview(bytearray(0))], 1)
    assert head == [] and tail == []


def test_split_tail_skips_trailing_empty_buffers() -> None:
    data = bytearray(b"abcd")
    head, tail = iov.split_tail([memoryview(data), memoryview(bytearray(0))], 1)
    assert [bytes(v) for v in head] == [b"abc"] and [bytes(v) for v in tail] == [b"d"]
