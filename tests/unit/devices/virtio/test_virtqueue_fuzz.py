"""Random hostile rings: pop either returns a well-formed chain inside guest
RAM, returns None, or raises a QueueError; nothing else escapes."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from kvmlite.devices.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC
from kvmlite.devices.virtio.queue import U32_MAX, Queue, QueueError
from tests.unit.devices.virtio.fakedriver import RecordingMemory
from tests.unit.devices.virtio.hostile import RAM, HostileRing, hostile_rings, install

MEMORY = RecordingMemory(RAM)


def drain(queue: Queue) -> tuple[int, QueueError | None]:
    """Pop and complete chains the way a device does, until empty or broken."""
    popped = 0
    for _ in range(3 * queue.size + 3):
        try:
            chain = queue.pop(MEMORY)
        except QueueError as exc:
            return popped, exc
        if chain is None:
            break
        assert chain.readable_len == sum(len(v) for v in chain.readable) <= U32_MAX
        assert chain.writable_len == sum(len(v) for v in chain.writable) <= U32_MAX
        assert len(chain.readable) + len(chain.writable) <= 2 * queue.size
        queue.add_used(MEMORY, chain.head, min(chain.writable_len, 1))
        chain.release()
        popped += 1
    queue.enable_notification(MEMORY)
    queue.needs_notification(MEMORY)
    return popped, None


@settings(max_examples=500, deadline=None)
@given(hostile_rings(), st.sampled_from([0, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC]))
def test_pop_random_hostile_ring_never_escapes_or_leaves_ram(ring: HostileRing, features: int) -> None:
    queue = Queue(16)
    install(ring, MEMORY, queue)
    queue.configure(MEMORY, features)
    MEMORY.views.clear()

    popped, error = drain(queue)
    event(f"{'some' if popped else 'no'} chains, then {type(error).__name__ if error else 'empty'}")

    # RecordingMemory asserted every view lies in RAM; the queue never
    # hands out more chains than the driver made available.
    assert popped <= min(ring.avail_idx, ring.size)
    assert error is None or "\n" not in str(error)
