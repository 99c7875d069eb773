"""Scatter-gather helpers over lists of ``memoryview`` buffers.

A request's header or status byte may sit in its own descriptor or share one
with data (§2.7.4: "the driver MUST NOT make assumptions about message
framing"), so devices cut buffer lists at byte offsets instead of at
descriptor boundaries.  Slicing a ``memoryview`` copies nothing.
"""

from __future__ import annotations

from typing import Sequence

IoVec = list[memoryview]


def total_len(views: Sequence[memoryview]) -> int:
    return sum(len(v) for v in views)


def split_at(views: Sequence[memoryview], n: int) -> tuple[IoVec, IoVec]:
    """The first ``n`` bytes of ``views`` and the rest (fewer when short).

    Walks only as far as byte ``n``; the rest of the list is sliced in one go
    (a Linux request can carry hundreds of buffers)."""
    head: IoVec = []
    for i, view in enumerate(views):
        if n <= 0:
            return head, list(views[i:])
        if n >= len(view):
            head.append(view)
            n -= len(view)
        else:
            head.append(view[:n])
            return head, [view[n:], *views[i + 1:]]
    return head, []


def split_tail(views: Sequence[memoryview], n: int) -> tuple[IoVec, IoVec]:
    """All but the last ``n`` bytes of ``views``, and those last bytes.

    Walks from the end: the usual ``n`` is 1 (a status byte).  Empty buffers
    at the end are dropped, so a non-empty tail holds at least one byte."""
    tail: IoVec = []
    for i in range(len(views) - 1, -1, -1):
        if n <= 0:
            return list(views[:i + 1]), tail
        view = views[i]
        if not len(view):
            continue            # carries no bytes: in neither part
        if n >= len(view):
            tail.insert(0, view)
            n -= len(view)
        else:
            tail.insert(0, view[len(view) - n:])
            return [*views[:i], view[:len(view) - n]], tail
    return [], tail


def gather(views: Sequence[memoryview], limit: int | None = None) -> bytes:
    """Copy out up to ``limit`` bytes (all when None)."""
    if limit is not None:
        views, _ = split_at(views, limit)
    return b"".join(views)


def scatter(views: Sequence[memoryview], data: bytes | bytearray | memoryview) -> int:
    """Copy ``data`` into ``views`` in order; returns the bytes copied."""
    src = memoryview(data)
    done = 0
    for view in views:
        if done == len(src):
            break
        n = min(len(view), len(src) - done)
        view[:n] = src[done:done + n]
        done += n
    return done


def advance(views: Sequence[memoryview], n: int) -> IoVec:
    """``views`` without their first ``n`` bytes, and without empty buffers."""
    return list(filter(len, split_at(views, n)[1] if n else views))
