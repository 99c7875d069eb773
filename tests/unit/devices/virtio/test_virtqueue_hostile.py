"""A hostile driver: every malformed ring or chain raises its typed error
(virtio 1.2 §2.7), and nothing outside guest RAM is touched."""

from __future__ import annotations

import pytest
from tests.unit.devices.virtio.fakedriver import FakeDriver, Posted
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmlite.devices.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC
from kvmlite.devices.virtio.queue import (VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
                                          AvailIndexError, ChainLengthError, ChainLoopError, DescriptorAddressError,
                                          DescriptorIndexError, DescriptorOrderError, IndirectTableError,
                                          NestedIndirectError, Queue, QueueError, RingAddressError)
from kvmlite.base.memory import GuestMemory

ALL_FEATURES = VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC
RAM = 1 << 20


def make_queue(memory: GuestMemory, size: int = 8, features: int = ALL_FEATURES) -> tuple[Queue, FakeDriver]:
    queue = Queue(size)
    driver = FakeDriver(memory, queue)
    queue.configure(memory, features)
    return queue, driver


def chain_slots(driver: FakeDriver, posted: Posted) -> tuple[int, list[int]]:
    """The table holding a posted chain's buffers and their indexes in it."""
    if posted.table is not None:
        return posted.table, list(range(posted.entries))
    return driver.desc_table, posted.descriptors


# --- ring layout (§2.7 "Queue Alignment") ---

@pytest.mark.parametrize(("field", "value"), [
    ("desc_table", 0x1008), ("avail_ring", 0x2001), ("used_ring", 0x3002),
    ("desc_table", RAM - 16), ("avail_ring", RAM), ("used_ring", 1 << 40),
])
def test_configure_bad_ring_address_raises_ring_address_error(memory: GuestMemory, field: str, value: int) -> None:
    queue = Queue(8)
    FakeDriver(memory, queue)
    setattr(queue, field, value)

    with pytest.raises(RingAddressError):
        queue.configure(memory, 0)


@pytest.mark.parametrize("size", [0, 3, 16])
def test_configure_bad_queue_size_raises_ring_address_error(memory: GuestMemory, size: int) -> None:
    queue = Queue(8)
    FakeDriver(memory, queue)
    queue.size = size

    with pytest.raises(RingAddressError):
        queue.configure(memory, 0)


def test_configure_ring_straddling_region_boundary_raises(split_memory: GuestMemory) -> None:
    queue = Queue(8)
    FakeDriver(split_memory, queue)
    queue.used_ring = split_memory.regions[0].end - 32

    with pytest.raises(RingAddressError):
        queue.configure(split_memory, 0)


# --- the available ring (§2.7.6) ---

def test_pop_avail_idx_jump_beyond_size_raises_and_keeps_position(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    driver.set_avail_idx(9)

    with pytest.raises(AvailIndexError):
        queue.pop(memory)
    assert queue.next_avail == 0


def test_pop_head_index_out_of_range_raises(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    driver.publish(8)

    with pytest.raises(DescriptorIndexError):
        queue.pop(memory)


# --- descriptor chains (§2.7.5) ---

def test_pop_next_index_out_of_range_raises(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    posted = driver.add([b"a", b"b"], publish=False)
    driver.patch_desc(driver.desc_table, posted.descriptors[0], next_=200)
    driver.publish(posted.head)

    with pytest.raises(DescriptorIndexError):
        queue.pop(memory)


def test_pop_looping_chain_raises_chain_loop_error(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    posted = driver.add([b"a", b"b"], publish=False)
    driver.patch_desc(driver.desc_table, posted.descriptors[1], flags=VIRTQ_DESC_F_NEXT, next_=posted.head)
    driver.publish(posted.head)

    with pytest.raises(ChainLoopError):
        queue.pop(memory)


def test_pop_looping_indirect_table_raises_chain_loop_error(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    posted = driver.add([b"a", b"b"], indirect=True, publish=False)
    assert posted.table is not None
    driver.patch_desc(posted.table, 1, flags=VIRTQ_DESC_F_NEXT, next_=0)
    driver.publish(posted.head)

    with pytest.raises(ChainLoopError):
        queue.pop(memory)


def test_pop_readable_after_writable_raises_order_error(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    posted = driver.add([b"a"], [4], publish=False)
    driver.patch_desc(driver.desc_table, posted.descriptors[0], flags=VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT)
    driver.patch_desc(driver.desc_table, posted.descriptors[1], flags=0)
    driver.publish(posted.head)

    with pytest.raises(DescriptorOrderError):
        queue.pop(memory)


@pytest.mark.parametrize(("addr", "length"), [
    (RAM, 1), (RAM - 4, 8), (1 << 63, 16), ((1 << 64) - 8, 16), (0x10000, 0xFFFF_FFFF),
])
def test_pop_buffer_outside_ram_raises_address_error(memory: GuestMemory, addr: int, length: int) -> None:
    queue, driver = make_queue(memory)
    posted = driver.add([b"a"], publish=False)
    driver.patch_desc(driver.desc_table, posted.head, addr=addr, length=length)
    driver.publish(posted.head)

    with pytest.raises(DescriptorAddressError):
        queue.pop(memory)


@pytest.mark.parametrize("offset", [-0x1000, 0x1000])
def test_pop_buffer_straddling_ram_region_end_raises(split_memory: GuestMemory, offset: int) -> None:
    queue, driver = make_queue(split_memory)
    low_end = split_memory.regions[0].end
    posted = driver.add([b"a"], publish=False)
    driver.patch_desc(driver.desc_table, posted.head, addr=low_end + offset, length=0x2000)
    driver.publish(posted.head)

    with pytest.raises(DescriptorAddressError):
        queue.pop(split_memory)


def test_pop_chain_over_4gib_raises_length_error(split_memory: GuestMemory) -> None:
    # Two readable descriptors over the same 3 GiB of low RAM: 6 GiB in total.
    queue, driver = make_queue(split_memory)
    low = split_memory.regions[0]
    posted = driver.add([b"a", b"b"], publish=False)
    for slot in posted.descriptors:
        driver.patch_desc(driver.desc_table, slot, addr=0, length=low.size)
    driver.publish(posted.head)

    with pytest.raises(ChainLengthError):
        queue.pop(split_memory)


# --- indirect descriptors (§2.7.5.3) ---

def test_pop_indirect_inside_indirect_raises_nested_error(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    posted = driver.add([b"a", b"b"], indirect=True, publish=False)
    assert posted.table is not None
    driver.patch_desc(posted.table, 1, flags=VIRTQ_DESC_F_INDIRECT, addr=posted.table, length=32)
    driver.publish(posted.head)

    with pytest.raises(NestedIndirectError):
        queue.pop(memory)


@pytest.mark.parametrize("length", [0, 8, 24, 17])
def test_pop_indirect_bad_length_raises(memory: GuestMemory, length: int) -> None:
    queue, driver = make_queue(memory)
    posted = driver.add([b"a", b"b"], indirect=True, publish=False)
    driver.patch_desc(driver.desc_table, posted.head, length=length)
    driver.publish(posted.head)

    with pytest.raises(IndirectTableError):
        queue.pop(memory)


def test_pop_indirect_with_next_flag_raises(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    posted = driver.add([b"a"], indirect=True, publish=False)
    driver.patch_desc(driver.desc_table, posted.head, flags=VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT)
    driver.publish(posted.head)

    with pytest.raises(IndirectTableError):
        queue.pop(memory)


def test_pop_indirect_not_negotiated_raises(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory, features=VIRTIO_F_EVENT_IDX)
    driver.add([b"a"], indirect=True)

    with pytest.raises(IndirectTableError):
        queue.pop(memory)


def test_pop_indirect_table_longer_than_queue_raises(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory, size=4)
    driver.add([b"x"] * 5, indirect=True)

    with pytest.raises(IndirectTableError):
        queue.pop(memory)


def test_pop_indirect_table_outside_ram_raises_address_error(memory: GuestMemory) -> None:
    queue, driver = make_queue(memory)
    posted = driver.add([b"a"], indirect=True, publish=False)
    driver.patch_desc(driver.desc_table, posted.head, addr=RAM - 8)
    driver.publish(posted.head)

    with pytest.raises(DescriptorAddressError):
        queue.pop(memory)


# --- exactly one defect, anywhere (property) ---

DEFECTS = {
    "head_out_of_range": DescriptorIndexError,
    "next_out_of_range": DescriptorIndexError,
    "loop": ChainLoopError,
    "readable_after_writable": DescriptorOrderError,
    "buffer_outside_ram": DescriptorAddressError,
    "avail_idx_jump": AvailIndexError,
    "nested_indirect": NestedIndirectError,
    "indirect_bad_length": IndirectTableError,
    "indirect_with_next": IndirectTableError,
}
MODULE_MEMORY = GuestMemory(RAM)


@st.composite
def one_defect(draw: st.DrawFn) -> tuple[int, int, int, bool, str, st.DataObject]:
    size = draw(st.sampled_from([8, 16]))     # room for the longest chain drawn below
    n_read = draw(st.integers(0, 3))
    n_write = draw(st.integers(0 if n_read else 1, 3))
    indirect = draw(st.booleans())
    applicable = ["head_out_of_range", "buffer_outside_ram", "avail_idx_jump", "loop"]
    if n_read + n_write >= 2:
        applicable += ["next_out_of_range", "readable_after_writable"]
    if indirect:
        applicable += ["nested_indirect", "indirect_bad_length", "indirect_with_next"]
    return size, n_read, n_write, indirect, draw(st.sampled_from(applicable)), draw(st.data())


def inject(driver: FakeDriver, posted: Posted, defect: str, data: st.DataObject) -> None:
    """Break a valid, not yet published chain in exactly one way, then publish."""
    table, slots = chain_slots(driver, posted)
    entries = len(slots) if posted.table is not None else driver.size
    pick = data.draw(st.integers(0, len(slots) - 1))
    if defect == "head_out_of_range":
        driver.publish(data.draw(st.integers(driver.size, 0xFFFF)))
        return
    if defect == "avail_idx_jump":
        driver.set_avail_idx(data.draw(st.integers(driver.size + 1, 0xFFFF)))
        return
    if defect == "next_out_of_range":
        driver.patch_desc(table, slots[data.draw(st.integers(0, len(slots) - 2))],
                          next_=data.draw(st.integers(entries, 0xFFFF)))
    elif defect == "loop":
        # back to a descriptor of the same direction, so the order stays valid
        last = driver.read_desc(table, slots[-1])
        same = [s for s in slots if driver.read_desc(table, s)[2] & VIRTQ_DESC_F_WRITE == last[2] & VIRTQ_DESC_F_WRITE]
        driver.patch_desc(table, slots[-1], flags=last[2] | VIRTQ_DESC_F_NEXT, next_=data.draw(st.sampled_from(same)))
    elif defect == "readable_after_writable":
        first, last = driver.read_desc(table, slots[0]), driver.read_desc(table, slots[-1])
        driver.patch_desc(table, slots[0], flags=first[2] | VIRTQ_DESC_F_WRITE)
        driver.patch_desc(table, slots[-1], flags=last[2] & ~VIRTQ_DESC_F_WRITE)
    elif defect == "buffer_outside_ram":
        length = data.draw(st.integers(1, 1 << 20))
        addr = data.draw(st.integers(RAM - length + 1, (1 << 64) - 1))
        driver.patch_desc(table, slots[pick], addr=addr, length=length)
    elif defect == "nested_indirect":
        flags = driver.read_desc(table, slots[pick])[2]
        driver.patch_desc(table, slots[pick], flags=(flags & ~VIRTQ_DESC_F_NEXT) | VIRTQ_DESC_F_INDIRECT,
                          addr=table, length=16)
    elif defect == "indirect_bad_length":
        bad = data.draw(st.integers(0, 16 * driver.size).filter(lambda n: n == 0 or n % 16))
        driver.patch_desc(driver.desc_table, posted.head, length=bad)
    elif defect == "indirect_with_next":
        driver.patch_desc(driver.desc_table, posted.head, flags=VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT)
    driver.publish(posted.head)


@settings(max_examples=300, deadline=None)
@given(one_defect())
def test_pop_chain_with_one_defect_raises_its_typed_error(case: tuple[int, int, int, bool, str, st.DataObject]) -> None:
    size, n_read, n_write, indirect, defect, data = case
    queue = Queue(size)
    driver = FakeDriver(MODULE_MEMORY, queue)
    queue.configure(MODULE_MEMORY, ALL_FEATURES)
    posted = driver.add([b"r" * 8] * n_read, [8] * n_write, indirect=indirect, publish=False)

    inject(driver, posted, defect, data)

    with pytest.raises(QueueError) as caught:
        queue.pop(MODULE_MEMORY)
    assert type(caught.value) is DEFECTS[defect], (defect, caught.value)
    assert "\n" not in str(caught.value)
