"""Port I/O through a real :class:`Bus`, the way a vCPU exit reaches a device."""

from __future__ import annotations

from kvmlite.devices.bus import Bus


class PortIo:
    def __init__(self) -> None:
        self.bus = Bus("pio")

    def inb(self, port: int) -> int:
        buf = bytearray(1)
        self.bus.read(port, memoryview(buf))
        return buf[0]

    def inw(self, port: int) -> int:
        buf = bytearray(2)
        self.bus.read(port, memoryview(buf))
        return int.from_bytes(buf, "little")

    def inl(self, port: int) -> int:
        buf = bytearray(4)
        self.bus.read(port, memoryview(buf))
        return int.from_bytes(buf, "little")

    def outb(self, port: int, value: int) -> None:
        self.bus.write(port, bytes([value]))

    def outw(self, port: int, value: int) -> None:
        self.bus.write(port, value.to_bytes(2, "little"))

    def outl(self, port: int, value: int) -> None:
        self.bus.write(port, value.to_bytes(4, "little"))
