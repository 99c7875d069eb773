"""Interrupt lines as devices see them.

A device model is handed an :class:`IrqLine` and never learns how the
interrupt reaches the guest (KVM_IRQ_LINE, an irqfd, or a test recorder).
"""

from __future__ import annotations

from typing import Protocol


class IrqLine(Protocol):
    def set_level(self, level: bool) -> None:
        """Drive the line high (asserted) or low."""

    def trigger(self) -> None:
        """Send one edge: what an edge-triggered or MSI interrupt needs."""


class RecordingIrqLine:
    """An IrqLine for unit tests: remembers the level and counts edges."""

    def __init__(self) -> None:
        self.level = False
        self.edges = 0          # rising edges seen, from set_level or trigger
        self.history: list[bool] = []

    def set_level(self, level: bool) -> None:
        if level and not self.level:
            self.edges += 1
        self.level = level
        self.history.append(level)

    def trigger(self) -> None:
        self.edges += 1
