"""Split virtqueue operations with a well-behaved driver (virtio 1.2 §2.7)."""

from __future__ import annotations

import pytest
from tests.unit.devices.virtio.fakedriver import FakeDriver

from kvmlite.devices.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC
from kvmlite.devices.virtio.queue import (NO_VECTOR, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT,
                                          VIRTQ_DESC_F_WRITE, Queue, vring_need_event)
from kvmlite.base.memory import GuestMemory

ALL_FEATURES = VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC


def make_queue(memory: GuestMemory, size: int = 16, features: int = ALL_FEATURES) -> tuple[Queue, FakeDriver]:
    queue = Queue(size)
    driver = FakeDriver(memory, queue)
    queue.configure(memory, features)
    return queue, driver


def test_queue_new_has_power_on_values() -> None:
    queue = Queue(256)

    assert (queue.size, queue.ready, queue.msix_vector) == (256, False, NO_VECTOR)
    assert (queue.desc_table, queue.avail_ring, queue.used_ring) == (0, 0, 0)


def test_queue_reset_after_use_restores_power_on_values(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory, size=8)
    driver.add([b"x"])
    queue.pop(memory)
    queue.msix_vector = 3

    queue.reset()

    assert (queue.size, queue.ready, queue.msix_vector, queue.next_avail) == (8, False, NO_VECTOR, 0)
    assert (queue.desc_table, queue.avail_ring, queue.used_ring, queue.event_idx) == (0, 0, 0, False)


@pytest.mark.parametrize("max_size", [0, 3, 65536])
def test_queue_bad_max_size_raises(max_size: int) -> None:
    with pytest.raises(ValueError):
        Queue(max_size)


def test_configure_features_enable_event_idx_and_indirect(memory: GuestMemory) -> None:
    queue, _ = make_queue(memory, features=VIRTIO_F_INDIRECT_DESC)

    assert (queue.event_idx, queue.indirect) == (False, True)


def test_pop_empty_ring_returns_none(memory: GuestMemory) -> None:
    queue, _ = make_queue(memory)

    assert queue.pop(memory) is None


def test_pop_direct_chain_yields_readable_then_writable_views(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    posted = driver.add([b"head", b"payload"], [3, 1])

    chain = queue.pop(memory)

    assert chain is not None and chain.head == posted.head
    assert [bytes(v) for v in chain.readable] == [b"head", b"payload"]
    assert [len(v) for v in chain.writable] == [3, 1]
    assert (chain.readable_len, chain.writable_len) == (11, 4)


def test_pop_writable_view_writes_guest_memory_without_copy(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    posted = driver.add([], [4])
    chain = queue.pop(memory)
    assert chain is not None

    chain.writable[0][:] = b"abcd"

    assert driver.read(posted.writable[0]) == b"abcd"


def test_pop_indirect_chain_yields_table_buffers(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    driver.add([b"out1", b"out2"], [8], indirect=True)

    chain = queue.pop(memory)

    assert chain is not None
    assert [bytes(v) for v in chain.readable] == [b"out1", b"out2"]
    assert chain.writable_len == 8


def test_pop_direct_descriptors_then_indirect_table_are_one_chain(memory: GuestMemory) -> None:
    # §2.7.5.3.2: zero or more direct descriptors followed by one indirect one;
    # the WRITE flag on the descriptor pointing at the table is ignored.
    queue, driver = make_queue(memory)
    header = driver.alloc(16)
    memory.write(header, b"H" * 16)
    table = driver.alloc(16)
    data = driver.alloc(32)
    driver.write_desc(table, 0, data, 32, VIRTQ_DESC_F_WRITE)
    driver.write_desc(driver.desc_table, 0, header, 16, 1, 1)
    driver.write_desc(driver.desc_table, 1, table, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE)
    driver.publish(0)

    chain = queue.pop(memory)

    assert chain is not None
    assert (chain.readable_len, chain.writable_len) == (16, 32)


def test_pop_consumes_chains_in_avail_order(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    heads = [driver.add([bytes([i])]).head for i in range(3)]

    popped = [queue.pop(memory) for _ in range(3)]

    assert [c.head for c in popped if c] == heads
    assert queue.pop(memory) is None


def test_chain_release_invalidates_views(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    driver.add([b"abc"], [2])
    chain = queue.pop(memory)
    assert chain is not None
    views = chain.readable + chain.writable

    chain.release()

    for view in views:
        with pytest.raises(ValueError):
            bytes(view)


def test_add_used_publishes_element_then_idx(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    posted = driver.add([b"req"], [10])
    chain = queue.pop(memory)
    assert chain is not None

    queue.add_used(memory, chain.head, 7)

    assert driver.used() == [(posted.head, 7)]


def test_add_used_bad_head_raises(memory: GuestMemory) -> None:
    queue, _ = make_queue(memory, size=8)

    with pytest.raises(ValueError):
        queue.add_used(memory, 8, 0)


def test_pop_and_add_used_across_16bit_index_wrap(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory, size=4)
    queue.next_avail = queue.next_used = 0xFFFE
    driver.set_avail_idx(0xFFFE)
    driver.last_used = 0xFFFE
    memory.write_u16(driver.used_ring + 2, 0xFFFE)
    heads = [driver.add([bytes([i])]).head for i in range(4)]

    for _ in heads:
        chain = queue.pop(memory)
        assert chain is not None
        queue.add_used(memory, chain.head, 1)

    assert [h for h, _ in driver.used()] == heads
    assert driver.used_idx() == 2 and queue.next_avail == 2


def test_needs_notification_without_event_idx_honours_no_interrupt(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory, features=0)
    driver.add([b"a"])
    chain = queue.pop(memory)
    assert chain is not None
    queue.add_used(memory, chain.head, 0)

    wanted = queue.needs_notification(memory)
    driver.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)
    suppressed = queue.needs_notification(memory)

    assert (wanted, suppressed) == (True, False)


def test_needs_notification_event_idx_fires_when_used_event_is_crossed(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    for _ in range(4):
        driver.add([b"a"])
    driver.set_used_event(2)   # "interrupt me once used idx passes 2"
    results = []

    for _ in range(4):
        chain = queue.pop(memory)
        assert chain is not None
        queue.add_used(memory, chain.head, 0)
        results.append(queue.needs_notification(memory))

    # first call always signals; then only the entry that moves used idx past 2
    assert results == [True, False, True, False]


def test_enable_notification_event_idx_publishes_avail_event(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    driver.add([b"a"])
    driver.add([b"b"])
    queue.pop(memory)
    queue.pop(memory)

    more = queue.enable_notification(memory)

    assert (more, driver.avail_event()) == (False, 2)


def test_enable_notification_buffers_already_posted_returns_true(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    driver.add([b"a"])

    assert queue.enable_notification(memory) is True


@pytest.mark.parametrize(("event", "new", "old", "expected"), [
    (0, 1, 0, True), (1, 1, 0, False), (5, 10, 3, True), (10, 10, 3, False), (0xFFFF, 1, 0xFFFE, True),
])
def test_vring_need_event_matches_spec_formula(event: int, new: int, old: int, expected: bool) -> None:
    assert vring_need_event(event, new, old) is expected
