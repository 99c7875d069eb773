"""virtio-rng (virtio 1.2 §5.4)."""

from __future__ import annotations

import pytest

from kvmlite.devices.virtio.queue import Queue
from kvmlite.devices.virtio.rng import VirtioRng
from kvmlite.base.memory import GuestMemory
from tests.unit.devices.virtio.fakedriver import FakeDriver, NeedsResetRecorder, RecordingInterrupt


def setup(memory: GuestMemory, max_request: int = 64 * 1024) -> tuple[VirtioRng, FakeDriver, RecordingInterrupt]:
    device = VirtioRng(queue_size=8, max_request=max_request)
    queue = Queue(8)
    driver = FakeDriver(memory, queue)
    interrupt = RecordingInterrupt()
    device.activate(memory, [queue], device.device_features(), interrupt)
    return device, driver, interrupt


def test_rng_fills_writable_buffers_with_varied_bytes(memory: GuestMemory) -> None:
    device, driver, interrupt = setup(memory)
    posted = driver.add([], [256, 256])

    device.queue_notify(0)

    data = b"".join(driver.read(w) for w in posted.writable)
    assert driver.used() == [(posted.head, 512)]
    assert len(set(data)) > 64          # 512 random bytes: ~220 distinct values expected
    assert data[:256] != data[256:]
    assert interrupt.used == [0]


def test_rng_two_requests_get_different_bytes(memory: GuestMemory) -> None:
    device, driver, _ = setup(memory)
    first, second = driver.add([], [32]), driver.add([], [32])

    device.queue_notify(0)

    assert driver.read(first.writable[0]) != driver.read(second.writable[0])


def test_rng_request_capped_at_max_request(memory: GuestMemory) -> None:
    device, driver, _ = setup(memory, max_request=100)
    posted = driver.add([], [64, 64])

    device.queue_notify(0)

    assert driver.used() == [(posted.head, 100)]
    assert driver.read(posted.writable[1])[36:] == bytes(28)
    assert device.stats() == {"requests": 1, "bytes": 100, "queue_errors": 0}


def test_rng_malformed_ring_requests_reset_then_ignores_queue(memory: GuestMemory) -> None:
    device, driver, _ = setup(memory)
    resets = NeedsResetRecorder()
    device.on_needs_reset = resets
    driver.set_avail_idx(100)

    device.queue_notify(0)
    driver.set_avail_idx(0)
    driver.add([], [16])
    device.queue_notify(0)

    assert len(resets.reasons) == 1 and "avail idx" in resets.reasons[0]
    assert driver.used() == []


def test_rng_reset_then_reactivate_serves_again(memory: GuestMemory) -> None:
    device, driver, interrupt = setup(memory)
    device.reset()
    driver.add([], [16])
    device.queue_notify(0)
    assert driver.used() == []

    queue = Queue(8)
    driver = FakeDriver(memory, queue)          # the driver reloads: new rings
    device.activate(memory, [queue], device.device_features(), interrupt)
    posted = driver.add([], [16])
    device.queue_notify(0)

    assert driver.used() == [(posted.head, 16)]


@pytest.mark.parametrize("index", [1, 7])
def test_rng_notify_for_unknown_queue_is_ignored(memory: GuestMemory, index: int) -> None:
    device, driver, _ = setup(memory)
    driver.add([], [16])

    device.queue_notify(index)

    assert driver.used() == []
