"""virtio-mmio against a hostile driver: wrong widths, garbage values,
out-of-order setup.  The transport keeps answering and logs why."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmlite.arch.x86 import layout
from kvmlite.base.memory import GuestMemory
from tests.unit.devices.virtio.transport.conftest import MMIO_BASE, MmioRig, make_mmio_rig
from tests.unit.devices.virtio.transport.mmiodriver import (
    ACKNOWLEDGE, CONFIG, DRIVER, DRIVER_OK, MAGIC, QUEUE_DESC_LOW, QUEUE_NOTIFY, QUEUE_NUM,
    QUEUE_NUM_MAX, QUEUE_READY, QUEUE_SEL, STATUS, VirtioMmioDriver)
from tests.unit.devices.virtio.transport.test_virtio_mmio import ACCEPTED, RINGS, bring_up


@pytest.mark.parametrize("size", [1, 2, 8])
def test_mmio_hostile_register_read_of_wrong_width_returns_zero(mmio: MmioRig, size: int) -> None:
    assert mmio.read(MAGIC, size) == 0


def test_mmio_hostile_unaligned_register_read_returns_zero(mmio: MmioRig) -> None:
    assert mmio.read(MAGIC + 1, 4) == 0


def test_mmio_hostile_register_write_of_wrong_width_is_ignored(mmio: MmioRig) -> None:
    mmio.write(STATUS, ACKNOWLEDGE, size=2)
    mmio.write(STATUS, ACKNOWLEDGE, size=1)

    assert mmio.read(STATUS) == 0


def test_mmio_hostile_queue_ready_before_features_ok_is_ignored(
        mmio: MmioRig, caplog: pytest.LogCaptureFixture) -> None:
    mmio.write(STATUS, ACKNOWLEDGE | DRIVER)
    mmio.write(QUEUE_SEL, 0)
    for low, value in zip((0x080, 0x090, 0x0A0), RINGS[0]):
        mmio.write(low, value)

    mmio.write(QUEUE_READY, 1)

    assert mmio.read(QUEUE_READY) == 0
    assert "before FEATURES_OK" in caplog.text


@pytest.mark.parametrize("size", [0, 5, 17, 1 << 20])
def test_mmio_hostile_bad_queue_num_is_ignored(mmio: MmioRig, size: int) -> None:
    VirtioMmioDriver(mmio).negotiate(ACCEPTED)
    mmio.write(QUEUE_SEL, 0)

    mmio.write(QUEUE_NUM, size)

    assert mmio.transport.core.queues[0].size == 16


def test_mmio_hostile_queue_select_past_last_queue(mmio: MmioRig) -> None:
    VirtioMmioDriver(mmio).negotiate(ACCEPTED)
    mmio.write(QUEUE_SEL, 0xFFFF_FFFF)

    mmio.write(QUEUE_NUM, 4)
    mmio.write(QUEUE_DESC_LOW, 0x1000)
    mmio.write(QUEUE_READY, 1)

    assert (mmio.read(QUEUE_NUM_MAX), mmio.read(QUEUE_READY)) == (0, 0)


def test_mmio_hostile_features_never_offered_refuse_features_ok(mmio: MmioRig) -> None:
    assert VirtioMmioDriver(mmio).negotiate(ACCEPTED | 1 << 20) is False


def test_mmio_hostile_driver_ok_skipping_features_ok_does_not_activate(mmio: MmioRig) -> None:
    mmio.write(STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK)

    assert mmio.read(STATUS) == ACKNOWLEDGE | DRIVER
    assert "activate" not in mmio.device.names()


def test_mmio_hostile_write_to_read_only_register_is_ignored(
        mmio: MmioRig, caplog: pytest.LogCaptureFixture) -> None:
    mmio.write(MAGIC, 0)

    assert mmio.read(MAGIC) == 0x74726976
    assert "read-only" in caplog.text


def test_mmio_hostile_queue_ready_zero_after_driver_ok_is_ignored(mmio: MmioRig) -> None:
    bring_up(mmio)
    mmio.write(QUEUE_SEL, 0)

    mmio.write(QUEUE_READY, 0)

    assert mmio.read(QUEUE_READY) == 1


def test_mmio_hostile_notify_for_missing_queue_is_ignored(mmio: MmioRig) -> None:
    bring_up(mmio)

    mmio.write(QUEUE_NOTIFY, 99)

    assert mmio.device.notified() == []


@pytest.mark.parametrize("offset,size", [(0, 3), (layout.VIRTIO_MMIO_SIZE - CONFIG - 2, 4)])
def test_mmio_hostile_bad_config_access_is_ignored(mmio: MmioRig, offset: int, size: int) -> None:
    mmio.write(CONFIG + offset, 0xFFFFFF, size=size)

    assert mmio.read(CONFIG + offset, size) == 0
    assert mmio.device.calls == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, layout.VIRTIO_MMIO_SIZE - 1), st.sampled_from([1, 2, 4, 8]),
                          st.integers(0, 2**64 - 1)), max_size=80))
def test_mmio_hostile_random_accesses_never_raise(memory: GuestMemory, ops) -> None:
    rig = make_mmio_rig(memory)
    bring_up(rig)

    for offset, size, value in ops:
        rig.bus.write(MMIO_BASE + offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        rig.bus.read(MMIO_BASE + offset, memoryview(bytearray(size)))
        rig.transport.signal_used_queue(0)

    assert rig.read(MAGIC) == 0x74726976
