"""A small VirtioDevice that records what its transport asks of it."""

from __future__ import annotations

from kvmlite.devices.virtio.device import (VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1,
                                           VIRTIO_ID_BLOCK, VirtioDevice, VirtioInterrupt)
from kvmlite.devices.virtio.queue import Queue
from kvmlite.base.memory import GuestMemory

FEATURE_A = 1 << 0
FEATURE_HIGH = 1 << 40
OFFERED = VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | FEATURE_A | FEATURE_HIGH
CONFIG = bytes(range(1, 25))        # 24 bytes of device configuration


class FakeDevice(VirtioDevice):
    """Two queues (16 and 8 entries), a 24-byte config space; ``fail``
    names methods that should raise, to test the transport's robustness."""

    device_type = VIRTIO_ID_BLOCK

    def __init__(self, features: int = OFFERED, queue_max_sizes: tuple[int, ...] = (16, 8)) -> None:
        super().__init__()
        self.queue_max_sizes = queue_max_sizes
        self.features = features
        self.config = bytearray(CONFIG)
        self.calls: list[tuple] = []
        self.fail: set[str] = set()
        self.interrupt: VirtioInterrupt | None = None
        self.queues: list[Queue] = []

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise RuntimeError(f"fake {name} failure")

    def device_features(self) -> int:
        return self.features

    def read_config(self, offset: int, data: memoryview) -> None:
        self._maybe_fail("read_config")
        chunk = bytes(self.config[offset:offset + len(data)])
        data[:] = chunk + bytes(len(data) - len(chunk))

    def write_config(self, offset: int, data: bytes) -> None:
        self._maybe_fail("write_config")
        self.calls.append(("write_config", offset, bytes(data)))
        if offset < len(self.config):
            self.config[offset:offset + len(data)] = data[:len(self.config) - offset]

    def activate(self, memory: GuestMemory, queues: list[Queue], driver_features: int,
                 interrupt: VirtioInterrupt) -> None:
        self.calls.append(("activate", driver_features, tuple(q.ready for q in queues)))
        self._maybe_fail("activate")
        self.interrupt = interrupt
        self.queues = queues

    def queue_notify(self, queue_index: int) -> None:
        self.calls.append(("notify", queue_index))
        self._maybe_fail("queue_notify")

    def reset(self) -> None:
        self.calls.append(("reset",))
        self._maybe_fail("reset")

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def notified(self) -> list[int]:
        return [call[1] for call in self.calls if call[0] == "notify"]
