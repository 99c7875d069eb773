"""The pop/handle/complete loop shared by the devices."""

from __future__ import annotations

from kvmlite.devices.virtio.device import VIRTIO_F_EVENT_IDX
from kvmlite.devices.virtio.queue import DescriptorChain, DescriptorIndexError, Queue
from kvmlite.devices.virtio.serve import serve_queue
from kvmlite.base.memory import GuestMemory
from tests.unit.devices.virtio.fakedriver import FakeDriver


def make(memory: GuestMemory) -> tuple[Queue, FakeDriver]:
    queue = Queue(8)
    driver = FakeDriver(memory, queue)
    queue.configure(memory, VIRTIO_F_EVENT_IDX)
    return queue, driver


def test_serve_queue_completes_every_chain_with_handler_length(memory: GuestMemory) -> None:
    queue, driver = make(memory)
    heads = [driver.add([b"x" * n]).head for n in (1, 2, 3)]

    served = serve_queue(queue, memory, lambda chain: chain.readable_len * 10)

    assert driver.used() == [(heads[0], 10), (heads[1], 20), (heads[2], 30)]
    assert (served.completed, served.notify, served.idle, served.error) == (3, True, True, None)
    assert driver.avail_event() == 3


def test_serve_queue_limit_stops_early_and_reports_not_idle(memory: GuestMemory) -> None:
    queue, driver = make(memory)
    for _ in range(5):
        driver.add([b"x"])

    served = serve_queue(queue, memory, lambda chain: 0, limit=2)

    assert (served.completed, served.idle) == (2, False)
    assert len(driver.used()) == 2


def test_serve_queue_malformed_chain_keeps_earlier_completions(memory: GuestMemory) -> None:
    queue, driver = make(memory)
    good = driver.add([b"x"]).head
    driver.publish(200)

    served = serve_queue(queue, memory, lambda chain: 0)

    assert isinstance(served.error, DescriptorIndexError)
    assert (served.completed, served.notify) == (1, True)
    assert driver.used() == [(good, 0)]


def test_serve_queue_releases_chain_views_after_handler(memory: GuestMemory) -> None:
    queue, driver = make(memory)
    driver.add([b"abc"])
    kept: list[DescriptorChain] = []

    def keep(chain: DescriptorChain) -> int:
        kept.append(chain)
        return 0

    serve_queue(queue, memory, keep)

    assert kept[0].readable == []
