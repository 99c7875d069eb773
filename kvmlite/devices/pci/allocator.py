"""Address allocation for BARs, as firmware does before the OS starts."""

from __future__ import annotations

from kvmlite.errors import ConfigError


class AddressAllocator:
    """Hands out naturally aligned blocks from ``[start, end)``, lowest first."""

    def __init__(self, name: str, start: int, end: int) -> None:
        if end <= start:
            raise ConfigError(f"{name}: empty window {start:#x}..{end:#x}")
        self.name = name
        self.start = start
        self.end = end
        self._next = start

    def allocate(self, size: int) -> int:
        """A ``size``-aligned block of ``size`` bytes (``size`` a power of two)."""
        base = (self._next + size - 1) & ~(size - 1)
        if base + size > self.end:
            raise ConfigError(f"{self.name}: no room for {size:#x} bytes "
                              f"(window {self.start:#x}..{self.end:#x}, next free {self._next:#x})")
        self._next = base + size
        return base

    def contains(self, address: int, size: int) -> bool:
        return self.start <= address and address + size <= self.end
