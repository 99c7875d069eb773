"""virtio-pci against a driver that programs garbage: every case leaves the
transport answering, the device untouched, and a log line saying why."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmlite.devices.virtio.device import VIRTIO_F_VERSION_1
from kvmlite.base.memory import GuestMemory
from tests.unit.devices.virtio.transport.conftest import PciRig, make_pci_rig
from tests.unit.devices.virtio.transport.fakes import FEATURE_A, FakeDevice
from tests.unit.devices.virtio.transport.pcidriver import (
    ACKNOWLEDGE, DEVICE, DRIVER, DRIVER_OK, FEATURES_OK, MSIX_CONFIG, NO_VECTOR, NUM_QUEUES,
    Q_DESCLO, Q_ENABLE, Q_MSIX, Q_SELECT, Q_SIZE, STATUS)
from tests.unit.devices.virtio.transport.test_virtio_pci import ACCEPTED, RINGS, bring_up

pytestmark = pytest.mark.usefixtures("caplog")


def test_pci_hostile_features_never_offered_refuse_features_ok(
        pci: PciRig, caplog: pytest.LogCaptureFixture) -> None:
    ok = pci.driver.negotiate(ACCEPTED | 1 << 7)

    assert ok is False
    assert "never offered" in caplog.text


def test_pci_hostile_features_without_version_1_refuse_features_ok(
        pci: PciRig, caplog: pytest.LogCaptureFixture) -> None:
    assert pci.driver.negotiate(FEATURE_A) is False
    assert "VERSION_1" in caplog.text


def test_pci_hostile_driver_ok_without_features_ok_does_not_activate(pci: PciRig) -> None:
    pci.driver.reset()

    pci.driver.write(STATUS, 1, ACKNOWLEDGE | DRIVER | DRIVER_OK)

    assert pci.driver.status() == ACKNOWLEDGE | DRIVER
    assert "activate" not in pci.device.names()


@pytest.mark.parametrize("size", [0, 3, 12, 17, 0xFFFF])
def test_pci_hostile_bad_queue_size_is_ignored(pci: PciRig, caplog: pytest.LogCaptureFixture,
                                               size: int) -> None:
    pci.driver.negotiate(ACCEPTED)
    pci.driver.write(Q_SELECT, 2, 0)

    pci.driver.write(Q_SIZE, 2, size)

    assert pci.driver.read(Q_SIZE, 2) == 16
    assert "size" in caplog.text


def test_pci_hostile_queue_enable_before_features_ok_is_ignored(pci: PciRig) -> None:
    pci.driver.reset()
    pci.driver.add_status(ACKNOWLEDGE | DRIVER)
    pci.driver.setup_queue(0, *RINGS[0])

    pci.driver.enable_queue(0)

    assert pci.driver.queue_enabled(0) is False


@pytest.mark.parametrize("rings", [(0x10008, 0x11000, 0x12000), (0x10000, 0x11001, 0x12000),
                                   (0x10000, 0x11000, 0x12002), (0x10000, 0x11000, 0xFFFF_F000),
                                   (1 << 40, 0x11000, 0x12000)])
def test_pci_hostile_misaligned_or_non_ram_rings_refuse_enable(pci: PciRig,
                                                                rings: tuple[int, int, int]) -> None:
    pci.driver.negotiate(ACCEPTED)
    pci.driver.setup_queue(0, *rings)

    pci.driver.enable_queue(0)

    assert pci.driver.queue_enabled(0) is False


def test_pci_hostile_queue_enable_zero_is_ignored(pci: PciRig) -> None:
    bring_up(pci)
    pci.driver.write(Q_SELECT, 2, 0)

    pci.driver.write(Q_ENABLE, 2, 0)

    assert pci.driver.read(Q_ENABLE, 2) == 1


def test_pci_hostile_queue_changes_after_driver_ok_are_ignored(pci: PciRig) -> None:
    bring_up(pci)
    pci.driver.write(Q_SELECT, 2, 0)

    pci.driver.write(Q_SIZE, 2, 4)
    pci.driver.write(Q_DESCLO, 4, 0x40000)

    assert pci.device.queues[0].size == 16
    assert pci.device.queues[0].desc_table == RINGS[0][0]


def test_pci_hostile_queue_select_past_last_queue(pci: PciRig) -> None:
    pci.driver.negotiate(ACCEPTED)
    pci.driver.write(Q_SELECT, 2, 7)

    pci.driver.write(Q_SIZE, 2, 4)
    pci.driver.write(Q_ENABLE, 2, 1)
    pci.driver.write(Q_MSIX, 2, 0)

    assert (pci.driver.read(Q_SIZE, 2), pci.driver.read(Q_ENABLE, 2)) == (0, 0)
    assert pci.driver.read(Q_MSIX, 2) == NO_VECTOR


@pytest.mark.parametrize("vector", [3, 4, 0x7FF, 0xFFFE])
def test_pci_hostile_bogus_msix_vector_reads_no_vector(pci: PciRig, vector: int) -> None:
    pci.driver.write(MSIX_CONFIG, 2, vector)
    pci.driver.write(Q_SELECT, 2, 0)
    pci.driver.write(Q_MSIX, 2, vector)

    assert pci.driver.read(MSIX_CONFIG, 2) == NO_VECTOR
    assert pci.driver.read(Q_MSIX, 2) == NO_VECTOR


@pytest.mark.parametrize("offset,size", [(0x04, 1), (0x04, 2), (0x14, 2), (0x16, 4), (0x20, 2),
                                         (0x21, 4), (0x38, 4), (0x100, 4)])
def test_pci_hostile_wrong_width_common_read_returns_zero(pci: PciRig, offset: int,
                                                          size: int) -> None:
    assert pci.driver.read(offset, size) == 0


def test_pci_hostile_wrong_width_status_write_is_ignored(
        pci: PciRig, caplog: pytest.LogCaptureFixture) -> None:
    pci.driver.write(STATUS, 2, ACKNOWLEDGE)

    assert pci.driver.status() == 0
    assert "wrong width" in caplog.text


def test_pci_hostile_write_to_read_only_field_is_ignored(pci: PciRig) -> None:
    pci.driver.write(NUM_QUEUES, 2, 9)

    assert pci.driver.read(NUM_QUEUES, 2) == 2


def test_pci_hostile_status_clearing_bits_is_ignored(pci: PciRig) -> None:
    bring_up(pci)

    pci.driver.write(STATUS, 1, ACKNOWLEDGE)

    assert pci.driver.status() == ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK


def test_pci_hostile_features_changed_after_features_ok_are_ignored(pci: PciRig) -> None:
    pci.driver.negotiate(ACCEPTED)

    pci.driver.set_driver_features(VIRTIO_F_VERSION_1)

    assert pci.transport.core.driver_features == ACCEPTED


def test_pci_hostile_notify_for_missing_queue_or_misaligned_is_ignored(pci: PciRig) -> None:
    bring_up(pci)
    base = pci.driver.notify_address(0)

    pci.guest.mem_write(base + 2, 2, 0)
    pci.guest.mem_write(base + 4 * 5, 2, 5)

    assert pci.device.notified() == []


def test_pci_hostile_access_straddling_regions_reads_zero(pci: PciRig) -> None:
    value = pci.guest.mem_read(pci.driver.bar_base(DEVICE) + 0xFFE, 4)

    assert value == 0


def test_pci_hostile_device_failing_activate_sets_needs_reset(memory: GuestMemory) -> None:
    device = FakeDevice()
    device.fail.add("activate")
    rig = make_pci_rig(memory, device)

    bring_up(rig, msix=False)

    assert rig.driver.status() & 0x40
    assert rig.driver.read_isr() & 0x2


def test_pci_hostile_device_failing_notify_sets_needs_reset(memory: GuestMemory) -> None:
    device = FakeDevice()
    rig = make_pci_rig(memory, device)
    bring_up(rig)
    device.fail.add("queue_notify")

    rig.driver.notify(0)
    rig.driver.notify(0)

    assert rig.driver.status() & 0x40
    assert device.notified() == [0]


def test_pci_hostile_device_failing_config_read_reads_zero(memory: GuestMemory) -> None:
    device = FakeDevice()
    device.fail.add("read_config")
    rig = make_pci_rig(memory, device)

    assert rig.driver.read_config(0, 4) == 0


def test_pci_hostile_log_flood_is_capped(pci: PciRig, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        for _ in range(200):
            pci.driver.write(NUM_QUEUES, 2, 1)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 30 <= len(warnings) <= 34


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["bar", "cfg"]), st.integers(0, 0x7FFF),
                          st.sampled_from([1, 2, 4, 8]), st.integers(0, 2**64 - 1)),
                max_size=60))
def test_pci_hostile_random_accesses_never_raise(memory: GuestMemory, ops) -> None:
    rig = make_pci_rig(memory)
    bring_up(rig)
    bar = rig.guest.bar_address(rig.slot, 0)

    for space, offset, size, value in ops:
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        if space == "bar":
            rig.mmio.write(bar + offset, data)
            rig.mmio.read(bar + offset, memoryview(bytearray(size)))
        else:
            rig.root.config_write(0, rig.slot, 0, offset % 256, data[:min(size, 4)])
            rig.root.config_read(0, rig.slot, 0, offset % 256, memoryview(bytearray(min(size, 4))))
        rig.transport.signal_used_queue(0)
        rig.transport.signal_config_change()

    assert rig.guest.cfg_read(rig.slot, 0x00, 2) == 0x1AF4
