"""Scatter-gather lists of guest buffers.

A request's header or status byte may sit in its own descriptor or share one
with data (§2.7.4: "the driver MUST NOT make assumptions about message
framing"), so devices cut buffer lists at byte offsets instead of at
descriptor boundaries.

:class:`Segments` holds buffers as two parallel lists, guest-physical
addresses and lengths, exactly as a chain was popped (each buffer checked to
lie inside guest RAM).  Cutting one copies two lists of ints in C, not a
Python object per buffer: a Linux request can carry 254 buffers.  Data moves
with ``GuestMemory.iovec`` and ``preadv``/``pwritev``, or, for the few
bytes of headers and status, with ``GuestMemory.read``/``write``.
"""

from __future__ import annotations

from kvmlite.base.memory import GuestMemory


class Segments:
    """Guest buffers: ``addrs[i]``, ``lens[i]`` bytes each, in order."""

    __slots__ = ("addrs", "lens")

    def __init__(self, addrs: list[int] | None = None, lens: list[int] | None = None) -> None:
        self.addrs = addrs if addrs is not None else []
        self.lens = lens if lens is not None else []

    def __len__(self) -> int:
        """The number of buffers (not bytes: see :meth:`total`)."""
        return len(self.addrs)

    def __repr__(self) -> str:
        return f"Segments({list(zip(self.addrs, self.lens))})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Segments) and (self.addrs, self.lens) == (other.addrs, other.lens)

    def total(self) -> int:
        return sum(self.lens)

    def split_at(self, n: int) -> tuple[Segments, Segments]:
        """The first ``n`` bytes and the rest (fewer when short).

        Walks only as far as byte ``n``; the rest is sliced in one go."""
        addrs, lens = self.addrs, self.lens
        for i, length in enumerate(lens):
            if n <= 0:
                return Segments(addrs[:i], lens[:i]), Segments(addrs[i:], lens[i:])
            if n < length:
                return (Segments(addrs[:i] + [addrs[i]], lens[:i] + [n]),
                        Segments([addrs[i] + n] + addrs[i + 1:], [length - n] + lens[i + 1:]))
            n -= length
        return Segments(list(addrs), list(lens)), Segments()

    def split_tail(self, n: int) -> tuple[Segments, Segments]:
        """All but the last ``n`` bytes, and those last bytes.

        Walks from the end: the usual ``n`` is 1 (a status byte).  Empty
        buffers at the end are dropped, so a non-empty tail holds at least
        one byte."""
        addrs, lens = self.addrs, self.lens
        tail_addrs: list[int] = []
        tail_lens: list[int] = []
        for i in range(len(lens) - 1, -1, -1):
            if n <= 0:
                return Segments(addrs[:i + 1], lens[:i + 1]), Segments(tail_addrs[::-1], tail_lens[::-1])
            length = lens[i]
            if not length:
                continue            # carries no bytes: in neither part
            if n >= length:
                tail_addrs.append(addrs[i])
                tail_lens.append(length)
                n -= length
            else:
                tail_addrs.append(addrs[i] + length - n)
                tail_lens.append(n)
                return (Segments(addrs[:i] + [addrs[i]], lens[:i] + [length - n]),
                        Segments(tail_addrs[::-1], tail_lens[::-1]))
        return Segments(), Segments(tail_addrs[::-1], tail_lens[::-1])

    def gather(self, memory: GuestMemory, limit: int | None = None) -> bytes:
        """Copy out up to ``limit`` bytes (all when None)."""
        if limit is not None and self.lens and self.lens[0] >= limit >= 0:
            return bytes(memory.view(self.addrs[0], limit))     # the usual header: in the first buffer
        segments = self if limit is None else self.split_at(limit)[0]
        return b"".join(memory.view(a, length) for a, length in zip(segments.addrs, segments.lens))

    def scatter(self, memory: GuestMemory, data: bytes | bytearray | memoryview) -> int:
        """Copy ``data`` into the buffers in order; returns the bytes copied."""
        src = memoryview(data)
        done = 0
        for addr, length in zip(self.addrs, self.lens):
            if done == len(src):
                break
            n = min(length, len(src) - done)
            memory.write(addr, src[done:done + n])
            done += n
        return done
