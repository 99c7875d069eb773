"""Guest RAM: anonymous host mappings registered with KVM, and bounds-checked
access to them.

Every read or write the VMM makes on behalf of a device goes through
:class:`GuestMemory`; an address or length outside RAM raises
:class:`GuestMemoryError` instead of touching host memory.  ``view`` gives a
zero-copy ``memoryview`` for virtqueue parsing and small copies; ``iovec``
turns a request's guest buffers into a ``struct iovec`` array for
``preadv``/``pwritev`` without creating a Python object per buffer.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
from array import array
from dataclasses import dataclass
from typing import Sequence

from kvmlite.arch.x86 import layout
from kvmlite.errors import ConfigError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]

MAP_HUGETLB = 0x40000
MAP_NORESERVE = 0x4000
MAP_FIXED = 0x10
SAVE_CHUNK = 1 << 20       # save_to: zero chunks of this size become holes
MADV_HUGEPAGE = 14
DESC_BYTES = 16            # a virtqueue descriptor (virtio 1.2 §2.7.5)
IOVEC_ALIGN = 1 << 32      # where low RAM starts in the host mapping (see GuestMemory.iovec)
DESC_TEST_LEN = 1 << 20    # descriptors_in_low_ram: longer buffers take the exact check
_LEN_BYTE_2 = bytes(range(DESC_TEST_LEN >> 16))   # values of a length's byte 2 below DESC_TEST_LEN
IOVEC_SHORT = 8            # io_buffers: up to this many, memoryviews are the quicker form


def descriptor_lists(table: bytes) -> tuple[list[int], list[int]]:
    """The addresses and the lengths of virtqueue descriptors (``table``:
    le64 addr, le32 len, le16 flags, le16 next, 16 bytes each), as lists."""
    view = memoryview(table)
    return view.cast("Q")[0::2].tolist(), view.cast("I")[2::4].tolist()


class GuestMemoryError(ValueError):
    """An access to guest-physical memory outside RAM."""


@dataclass
class Region:
    """One contiguous guest-physical range backed by part of a host mapping."""

    guest_addr: int
    size: int
    view: memoryview       # writable bytes of this region
    host_addr: int         # userspace address for KVM_SET_USER_MEMORY_REGION

    @property
    def end(self) -> int:
        return self.guest_addr + self.size


def x86_ram_ranges(size: int) -> list[tuple[int, int]]:
    """Guest-physical (start, length) of RAM for a guest of ``size`` bytes:
    below the 32-bit PCI hole, and the rest above 4 GiB."""
    low = min(size, layout.MMIO_HOLE_START)
    ranges = [(0, low)]
    if size > low:
        ranges.append((layout.HIGH_RAM_START, size - low))
    return ranges


class GuestMemory:
    """The guest's RAM.

    Thread safety: reads and writes are plain memory accesses; callers that
    need atomicity against the guest (virtqueue indexes) use the aligned
    ``read_u16``/``write_u16`` helpers, which compile to one load/store.
    """

    def __init__(self, size: int, *, hugepages: bool = False, file: int | None = None) -> None:
        """``size`` bytes of fresh anonymous RAM, or with ``file`` (an open
        descriptor of a snapshot's memory file, at least ``size`` bytes) that
        file mapped copy-on-write: pages come in from the file when first
        touched, a write gives this VM its own copy, and every VM mapping the
        same file shares the pages none of them wrote."""
        if size <= 0 or size % mmap.PAGESIZE:
            raise ConfigError(f"memory size {size} is not a positive multiple of the page size")
        self.size = size
        self._mmap, skip = self._map(size, hugepages) if file is None else self._map_file(file, size)
        self._mapped = memoryview(self._mmap)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._mmap)) + skip
        self._whole = self._mapped[skip:skip + size]
        self.regions: list[Region] = []
        offset = 0
        for start, length in x86_ram_ranges(size):
            self.regions.append(Region(start, length, self._whole[offset:offset + length], base + offset))
            offset += length
        self._starts = [r.guest_addr for r in self.regions]
        # Fast path for the low region, where nearly every ring and buffer lives.
        self._low_view = self.regions[0].view
        self._low_end = self.regions[0].end
        self._low_host = self.regions[0].host_addr
        # With low RAM at a 4 GiB-aligned host address, a low-RAM buffer's
        # host address is its guest address in the low 32 bits and this
        # constant in the high 32: iovec() builds arrays without arithmetic.
        self._iovec_high = self._low_host >> 32 if self._low_host % IOVEC_ALIGN == 0 else None
        # descriptors_in_low_ram: addresses in 64 KiB units must stay below
        # this limit; the classes sort an address's bytes 3 and 2 against it.
        self._low_limit = max(0, (self._low_end - DESC_TEST_LEN) >> 16)
        high, low = divmod(self._low_limit, 256)
        self._byte3_class = bytes(0 if v < high else 1 if v == high else 2 for v in range(256))
        self._byte2_class = bytes(int(v >= low) for v in range(256))

    @staticmethod
    def _map(size: int, hugepages: bool) -> tuple[mmap.mmap, int]:
        """The host mapping, and where in it guest RAM starts.

        Ordinary memory is mapped ``IOVEC_ALIGN`` bytes larger than needed
        so that RAM can start at a 4 GiB-aligned host address (see
        ``iovec``).  The slack is address space only: the mapping is
        ``MAP_NORESERVE`` and nothing ever touches it, so it costs no
        memory.  When even that is refused (strict overcommit accounting),
        RAM is mapped at whatever address the kernel picks."""
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        if hugepages:
            try:
                return mmap.mmap(-1, size, flags | MAP_HUGETLB, prot), 0
            except OSError as exc:
                raise ConfigError(f"cannot allocate {size >> 20} MiB of hugepages ({exc.strerror}); "
                                  "reserve them in /proc/sys/vm/nr_hugepages") from None
        try:
            mm = mmap.mmap(-1, size + IOVEC_ALIGN, flags, prot)
            skip = -ctypes.addressof(ctypes.c_char.from_buffer(mm)) % IOVEC_ALIGN
        except OSError:
            try:
                mm, skip = mmap.mmap(-1, size, flags, prot), 0
            except OSError as exc:
                raise ConfigError(f"cannot allocate {size >> 20} MiB of guest memory: {exc.strerror}") from None
        try:
            mm.madvise(MADV_HUGEPAGE)  # transparent hugepages when the host allows
        except OSError:
            pass
        return mm, skip

    @staticmethod
    def _map_file(fd: int, size: int) -> tuple[mmap.mmap, int]:
        """``fd`` mapped MAP_PRIVATE over the 4 GiB-aligned part of an
        address-space reservation (as ``_map``), so ``iovec`` keeps its fast
        path; closing the reservation unmaps the file too."""
        mm, skip = GuestMemory._map(size, False)
        base = ctypes.addressof(ctypes.c_char.from_buffer(mm)) + skip
        # MAP_NORESERVE as for fresh RAM: a private writable mapping is
        # otherwise charged in full against overcommit, and a guest as large
        # as the host's free memory could not be restored at all.
        got = _libc.mmap(ctypes.c_void_p(base), ctypes.c_size_t(size), mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd, ctypes.c_long(0))
        if got != base:
            err = ctypes.get_errno()
            mm.close()
            raise ConfigError(f"cannot map the memory file: {os.strerror(err)}")
        return mm, skip

    def save_to(self, fd: int) -> int:
        """Write all of RAM (low region, then high) to ``fd`` from its start,
        leaving holes where a whole chunk is zero (a fresh guest's RAM is
        mostly untouched); returns the bytes covered.  The caller keeps the
        vCPUs parked meanwhile."""
        os.ftruncate(fd, 0)
        os.ftruncate(fd, self.size)
        zero = bytes(SAVE_CHUNK)
        offset = 0
        while offset < self.size:
            chunk = self._whole[offset:offset + SAVE_CHUNK]
            data = chunk.tobytes()      # a C copy: far quicker than comparing the view itself
            if data != zero[:len(data)]:
                os.pwrite(fd, data, offset)
            offset += len(chunk)
        return offset

    def close(self) -> None:
        for region in self.regions:
            region.view.release()
        self._whole.release()
        self._mapped.release()
        try:
            self._mmap.close()
        except BufferError:
            pass  # a device still holds a view; the mapping goes with the process

    # --- lookup ---

    def _find(self, addr: int, length: int) -> tuple[Region, int]:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            region = self.regions[i]
            offset = addr - region.guest_addr
            if 0 <= length and offset + length <= region.size:
                return region, offset
        raise GuestMemoryError(f"guest address range {addr:#x}+{length:#x} is outside RAM")

    def contains(self, addr: int, length: int = 1) -> bool:
        try:
            self._find(addr, length)
            return True
        except GuestMemoryError:
            return False

    def view(self, addr: int, length: int) -> memoryview:
        """A zero-copy writable view of ``length`` bytes at ``addr``.

        The range must lie inside one RAM region."""
        if 0 <= addr and 0 <= length and addr + length <= self._low_end:
            return self._low_view[addr:addr + length]
        region, offset = self._find(addr, length)
        return region.view[offset:offset + length]

    @property
    def low_end(self) -> int:
        """End of the RAM region at guest address 0: a range ``addr``,
        ``length`` (both non-negative) with ``addr + length <= low_end`` is
        RAM.  Lets hot loops skip a call for the usual case."""
        return self._low_end

    def iovec(self, addrs: Sequence[int], lens: Sequence[int]) -> array:
        """A ``struct iovec`` array (host address, length pairs, as
        ``array('Q')``) for the guest buffers ``addrs[i]``/``lens[i]``, for
        ``preadv``/``pwritev``.

        Raises GuestMemoryError unless every buffer lies inside one RAM
        region: this is the check that stands between a guest-supplied
        address and a raw host pointer.  The host addresses stay valid
        while the memory is open; devices finish their requests before the
        VM closes it.

        The usual case (every buffer in low RAM, which starts at a 4 GiB-
        aligned host address) costs a few C-level passes over the lists and
        no Python step per buffer: ``array('I', ...)`` refuses anything
        outside 0..2^32-1, the largest address plus the largest length
        bounds every buffer's end, and the arrays are interleaved into the
        iovec's 32-bit words (address low, address high, length, 0).
        Anything else goes buffer by buffer."""
        n = len(addrs)
        if len(lens) != n:
            raise ValueError("iovec: addresses and lengths differ in number")
        if n and self._iovec_high is not None:
            try:
                low, sizes = array("I", addrs), array("I", lens)
            except OverflowError:
                pass
            else:
                if max(addrs) + max(lens) <= self._low_end:
                    out = array("Q", bytes(16 * n))
                    words = memoryview(out).cast("B").cast("I")
                    words[0::4] = low
                    words[1::4] = array("I", (self._iovec_high,)) * n
                    words[2::4] = sizes
                    return out
        flat = [0] * (2 * n)
        flat[0::2] = [self._host_address(a, length) for a, length in zip(addrs, lens)]
        flat[1::2] = lens
        return array("Q", flat)

    def descriptors_in_low_ram(self, table: bytes) -> bool:
        """Whether a few tests on bytes show that every buffer described by
        ``table`` (virtqueue descriptors: le64 addr, le32 len, le16 flags,
        le16 next, 16 bytes each) lies inside low RAM: each length below
        1 MiB (``DESC_TEST_LEN``), each address below 4 GiB and, counted in
        64 KiB units, below ``(low_end - 1 MiB) >> 16``, so each buffer ends
        inside low RAM.  False only means "not shown": a buffer of 1 MiB or
        more, or in the last MiB of low RAM, needs the exact check.

        No Python step per descriptor: the address's bytes 3 and 2 are
        classed against the limit's with ``bytes.translate``, and the
        entries whose byte 3 equals the limit's are picked out by ANDing
        two class strings as integers."""
        n, odd = divmod(len(table), DESC_BYTES)
        if odd or not self._low_limit:
            return False
        high = memoryview(table).cast("I")[1::4].tobytes()          # address bits 32..63
        if high.count(0) != len(high) or table[11::DESC_BYTES].count(0) != n \
                or table[10::DESC_BYTES].translate(None, _LEN_BYTE_2):  # length below 1 MiB
            return False
        byte3 = table[3::DESC_BYTES].translate(self._byte3_class)     # 0 below, 1 equal, 2 above
        if 2 in byte3:
            return False
        if 1 not in byte3:
            return True
        byte2 = table[2::DESC_BYTES].translate(self._byte2_class)     # 1 at or above
        return not int.from_bytes(byte3, "little") & int.from_bytes(byte2, "little")

    def descriptor_iovec(self, table: bytes) -> array:
        """The ``struct iovec`` array for the buffers described by ``table``
        (virtqueue descriptors, as for :meth:`descriptors_in_low_ram`), in
        table order; GuestMemoryError unless every buffer lies inside one
        RAM region, as for :meth:`iovec`.

        When the bytes show every buffer in low RAM, and low RAM starts at a
        4 GiB-aligned host address, the iovec is the table itself with the
        address's high word replaced by the host's and the flags and next
        fields cleared: two strided copies, whatever the number of buffers."""
        n = len(table) // DESC_BYTES
        if self._iovec_high is not None and self.descriptors_in_low_ram(table):
            iov = array("Q")
            iov.frombytes(table)
            with memoryview(iov) as view:
                words = view.cast("B").cast("I")
                words[1::4] = array("I", (self._iovec_high,)) * n
                words[3::4] = array("I", bytes(4 * n))
                words.release()
            return iov
        if len(table) % DESC_BYTES:
            raise ValueError(f"descriptor table of {len(table)} bytes is not whole descriptors")
        return self.iovec(*descriptor_lists(table))

    def io_buffers(self, addrs: Sequence[int], lens: Sequence[int]) -> list[memoryview] | array:
        """The guest buffers ``addrs[i]``/``lens[i]`` in the cheapest form for
        one ``preadv``/``pwritev`` (``RawDisk`` takes both): a few as
        ``memoryview``s for ``os.preadv``, many as an :meth:`iovec` array
        for the ctypes call, whose fixed cost is higher but whose cost per
        buffer is far lower.  Raises GuestMemoryError like ``view``."""
        if len(addrs) <= IOVEC_SHORT:
            view = self.view
            return [view(a, length) for a, length in zip(addrs, lens)]
        return self.iovec(addrs, lens)

    def host_address(self, addr: int, length: int) -> int:
        """The VMM's virtual address of the ``length`` bytes at guest
        address ``addr``, which must lie inside one RAM region (what a
        kernel component given the VMM's addresses, such as vhost, needs).
        Raises GuestMemoryError otherwise."""
        region, offset = self._find(addr, length)
        return region.host_addr + offset

    _host_address = host_address

    # --- copies ---

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.view(addr, length))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.view(addr, len(data))[:] = data

    def fill(self, addr: int, length: int, byte: int = 0) -> None:
        if length == 0:
            return
        view = self.view(addr, length)
        ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(view)), byte, length)

    # Fixed-size accesses go through memoryview.cast so each is one load or
    # one store of the full width (CPython copies the item with a fixed-size
    # memcpy), which x86 performs atomically when aligned.  struct.pack_into
    # would not do: it zeroes the destination before writing the value, so a
    # guest polling a ring index could see it drop to 0 for an instant.

    def read_u8(self, addr: int) -> int:
        return self.view(addr, 1)[0]

    def read_u16(self, addr: int) -> int:
        return self.view(addr, 2).cast("H")[0]

    def read_u32(self, addr: int) -> int:
        return self.view(addr, 4).cast("I")[0]

    def read_u64(self, addr: int) -> int:
        return self.view(addr, 8).cast("Q")[0]

    def write_u8(self, addr: int, value: int) -> None:
        self.view(addr, 1)[0] = value

    def write_u16(self, addr: int, value: int) -> None:
        self.view(addr, 2).cast("H")[0] = value

    def write_u32(self, addr: int, value: int) -> None:
        self.view(addr, 4).cast("I")[0] = value

    def write_u64(self, addr: int, value: int) -> None:
        self.view(addr, 8).cast("Q")[0] = value


