"""virtio-pci modern (virtio 1.2 §4.1) driven as Linux's virtio_pci driver
drives it: discovery through the type-1 mechanism, then the register
sequence of §3.1.1 and §4.1.5."""

from __future__ import annotations

import os
import threading
import time

import pytest

from kvmlite.devices.interrupts import RecordingIoEventRegistrar, RecordingMsiAllocator
from kvmlite.devices.virtio.device import VIRTIO_F_VERSION_1, VIRTIO_ID_RNG
from kvmlite.devices.virtio.queue import Queue
from kvmlite.devices.virtio.rng import VirtioRng
from kvmlite.devices.virtio.transport.pci import VirtioPciTransport
from kvmlite.devices.virtio.transport.pci_layout import NOTIFY_OFF_MULTIPLIER
from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory
from tests.unit.devices.virtio.fakedriver import FakeDriver
from tests.unit.devices.virtio.transport.conftest import PciRig, make_pci_rig
from tests.unit.devices.virtio.transport.fakes import (CONFIG, FEATURE_A, FEATURE_HIGH, OFFERED,
                                                      FakeDevice)
from tests.unit.devices.virtio.transport.pcidriver import (
    ACKNOWLEDGE, COMMON, DEVICE, DFSELECT, DRIVER, DRIVER_OK, FEATURES_OK, ISR, MSIX_CONFIG,
    NO_VECTOR, NOTIFY, NUM_QUEUES, PCI_CFG, Q_ENABLE, Q_MSIX, Q_SELECT, Q_SIZE, STATUS)

RINGS = [(0x10000, 0x11000, 0x12000), (0x20000, 0x21000, 0x22000)]
ACCEPTED = VIRTIO_F_VERSION_1 | FEATURE_A


def bring_up(rig: PciRig, msix: bool = True, features: int = ACCEPTED) -> None:
    """virtio_dev_probe + vp_modern_find_vqs + virtio_device_ready."""
    drv = rig.driver
    assert drv.negotiate(features)
    if msix:
        drv.enable_msix(3)
        drv.write(MSIX_CONFIG, 2, 0)
        assert drv.read(MSIX_CONFIG, 2) == 0
    for index, rings in enumerate(RINGS):
        vector = index + 1 if msix else NO_VECTOR
        assert drv.setup_queue(index, *rings, vector=vector) == vector
    for index in range(len(RINGS)):
        drv.enable_queue(index)
    drv.add_status(DRIVER_OK)


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


# --- discovery ---

def test_virtio_pci_header_identifies_modern_block_device(pci: PciRig) -> None:
    g, s = pci.guest, pci.slot

    assert (g.cfg_read(s, 0x00, 2), g.cfg_read(s, 0x02, 2)) == (0x1AF4, 0x1042)
    assert g.cfg_read(s, 0x08, 1) == 1
    assert g.cfg_read(s, 0x0A, 2) == 0x0180
    assert (g.cfg_read(s, 0x2C, 2), g.cfg_read(s, 0x2E, 2)) == (0x1AF4, 0x1100)


def test_virtio_pci_other_device_type_uses_unclassified_class(memory: GuestMemory) -> None:
    rig = make_pci_rig(memory, VirtioRng())

    assert rig.guest.cfg_read(rig.slot, 0x02, 2) == 0x1040 + VIRTIO_ID_RNG
    assert rig.guest.cfg_read(rig.slot, 0x0A, 2) == 0x00FF


def test_virtio_pci_bar0_is_64bit_non_prefetchable_memory(pci: PciRig) -> None:
    bars = pci.guest.size_bars(pci.slot)

    assert len(bars) == 1
    assert (bars[0].index, bars[0].is64, bars[0].prefetchable, bars[0].is_io) == (0, True, False, False)
    assert bars[0].size == pci.transport.layout.bar_size


def test_virtio_pci_capabilities_locate_every_structure_in_bar0(pci: PciRig) -> None:
    caps = pci.driver.caps

    assert set(caps) == {COMMON, NOTIFY, ISR, DEVICE, PCI_CFG}
    assert {cap.bar for t, cap in caps.items() if t != PCI_CFG} == {0}
    assert caps[COMMON].length >= 0x38
    assert caps[NOTIFY].multiplier == NOTIFY_OFF_MULTIPLIER
    assert caps[NOTIFY].length >= NOTIFY_OFF_MULTIPLIER * (len(RINGS) - 1) + 2
    assert pci.driver.msix_cap is not None


def test_virtio_pci_capability_lengths_match_their_cfg_type(pci: PciRig) -> None:
    g, s = pci.guest, pci.slot

    lengths = {t: g.cfg_read(s, cap.position + 2, 1) for t, cap in pci.driver.caps.items()}

    assert lengths == {COMMON: 16, NOTIFY: 20, ISR: 16, DEVICE: 16, PCI_CFG: 20}


def test_virtio_pci_num_queues_and_max_sizes(pci: PciRig) -> None:
    drv = pci.driver
    drv.write(Q_SELECT, 2, 1)

    assert drv.read(NUM_QUEUES, 2) == 2
    assert drv.read(Q_SIZE, 2) == 8


# --- initialisation ---

def test_virtio_pci_device_features_read_through_select_window(pci: PciRig) -> None:
    assert pci.driver.device_features() == OFFERED
    pci.driver.write(DFSELECT, 4, 2)
    assert pci.driver.read(0x04, 4) == 0


def test_virtio_pci_linux_init_sequence_activates_device(pci: PciRig) -> None:
    bring_up(pci)

    assert pci.device.calls[-1] == ("activate", ACCEPTED, (True, True))
    assert pci.driver.status() == ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    queue = pci.device.queues[1]
    assert (queue.desc_table, queue.avail_ring, queue.used_ring) == RINGS[1]
    assert (queue.size, queue.msix_vector) == (8, 2)


def test_virtio_pci_driver_features_read_back(pci: PciRig) -> None:
    pci.driver.negotiate(ACCEPTED | FEATURE_HIGH)
    pci.driver.write(0x08, 4, 1)

    assert pci.driver.read(0x0C, 4) == (ACCEPTED | FEATURE_HIGH) >> 32


def test_virtio_pci_reset_returns_everything_to_power_on(pci: PciRig) -> None:
    bring_up(pci)
    pci.transport.signal_config_change()

    pci.driver.write(STATUS, 1, 0)

    drv = pci.driver
    assert pci.device.calls[-1] == ("reset",)
    assert (drv.status(), drv.read(MSIX_CONFIG, 2), drv.read(DFSELECT, 4)) == (0, NO_VECTOR, 0)
    drv.write(Q_SELECT, 2, 0)
    assert (drv.read(Q_SIZE, 2), drv.read(Q_ENABLE, 2), drv.read(Q_MSIX, 2)) == (16, 0, NO_VECTOR)
    assert pci.device.queues[0].desc_table == 0


def test_virtio_pci_queue_size_smaller_than_max_is_kept(pci: PciRig) -> None:
    pci.driver.negotiate(ACCEPTED)

    pci.driver.setup_queue(0, *RINGS[0], size=4)

    assert pci.driver.read(Q_SIZE, 2) == 4


# --- notifications ---

def test_virtio_pci_notify_write_reaches_queue_notify(pci: PciRig) -> None:
    bring_up(pci)

    pci.driver.notify(1)
    pci.driver.notify(0)

    assert pci.device.notified() == [1, 0]


def test_virtio_pci_notify_addresses_are_distinct_per_queue(pci: PciRig) -> None:
    first, second = pci.driver.notify_address(0), pci.driver.notify_address(1)

    assert second - first == NOTIFY_OFF_MULTIPLIER


def test_virtio_pci_notify_before_driver_ok_is_delivered_at_activation(pci: PciRig) -> None:
    drv = pci.driver
    drv.negotiate(ACCEPTED)
    drv.setup_queue(0, *RINGS[0])
    drv.enable_queue(0)

    drv.notify(0)
    early = pci.device.notified()
    drv.add_status(DRIVER_OK)

    assert early == []
    assert pci.device.notified() == [0]


# --- interrupts ---

def test_virtio_pci_used_buffer_with_msix_sends_queue_vector(pci: PciRig) -> None:
    bring_up(pci)

    pci.transport.signal_used_queue(1)

    assert pci.msi.vectors[2].sent == [(0xFEE0_0000, 0x42)]
    assert pci.line.edges == 0
    assert pci.driver.read_isr() == 0


def test_virtio_pci_config_change_with_msix_sends_config_vector(pci: PciRig) -> None:
    bring_up(pci)
    generation = pci.driver.read(0x15, 1)

    pci.transport.signal_config_change()

    assert pci.msi.vectors[0].sent == [(0xFEE0_0000, 0x40)]
    assert pci.driver.read(0x15, 1) == (generation + 1) & 0xFF


def test_virtio_pci_queue_with_no_vector_sends_nothing_under_msix(pci: PciRig) -> None:
    bring_up(pci)
    pci.device.queues[0].msix_vector = NO_VECTOR

    pci.transport.signal_used_queue(0)

    assert all(not v.sent for v in pci.msi.vectors)
    assert pci.line.edges == 0


def test_virtio_pci_intx_isr_read_clears_and_lowers_line(pci: PciRig) -> None:
    bring_up(pci, msix=False)

    pci.transport.signal_used_queue(0)
    raised = pci.line.level
    first, second = pci.driver.read_isr(), pci.driver.read_isr()

    assert raised is True
    assert (first, second) == (0x1, 0x0)
    assert pci.line.level is False
    assert pci.guest.cfg_read(pci.slot, 0x06, 2) & 0x08 == 0


def test_virtio_pci_intx_config_change_sets_isr_bit1(pci: PciRig) -> None:
    bring_up(pci, msix=False)

    pci.transport.signal_config_change()
    pci.transport.signal_used_queue(1)

    assert pci.driver.read_isr() == 0x3
    assert pci.line.history == [True, False]


def test_virtio_pci_masked_msix_vector_is_pending_then_delivered(pci: PciRig) -> None:
    bring_up(pci)
    entry = pci.driver.msix_table() + 16 * 1
    pci.guest.mem_write(entry + 12, 4, 1)

    pci.transport.signal_used_queue(0)
    pba = pci.guest.mem_read(pci.transport.layout.pba_offset + pci.guest.bar_address(pci.slot, 0), 8)
    pci.guest.mem_write(entry + 12, 4, 0)

    assert pba == 0b10
    assert pci.msi.vectors[1].sent == [(0xFEE0_0000, 0x41)]


# --- device configuration space ---

def test_virtio_pci_device_config_reads_device_bytes(pci: PciRig) -> None:
    assert pci.driver.read_config(0, 4) == int.from_bytes(CONFIG[:4], "little")
    assert pci.driver.read_config(20, 2) == int.from_bytes(CONFIG[20:22], "little")


def test_virtio_pci_device_config_past_device_space_reads_zero(pci: PciRig) -> None:
    assert pci.driver.read_config(0x100, 4) == 0
    assert pci.driver.read_config(0xFFC, 4) == 0


def test_virtio_pci_device_config_write_reaches_device(pci: PciRig) -> None:
    pci.guest.mem_write(pci.driver.bar_base(DEVICE) + 2, 2, 0xBEEF)

    assert pci.device.calls[-1] == ("write_config", 2, b"\xef\xbe")


# --- DEVICE_NEEDS_RESET ---

def test_virtio_pci_needs_reset_sets_status_and_signals_config(pci: PciRig) -> None:
    bring_up(pci)

    pci.device.on_needs_reset("ring broken")

    assert pci.driver.status() & 0x40
    assert pci.msi.vectors[0].sent != []
    pci.driver.notify(0)
    assert pci.device.notified() == []


def test_virtio_pci_reset_after_needs_reset_clears_it(pci: PciRig) -> None:
    bring_up(pci)
    pci.device.on_needs_reset("ring broken")

    pci.driver.reset()

    assert pci.driver.status() == 0


def test_virtio_pci_needs_reset_before_driver_ok_does_not_interrupt(pci: PciRig) -> None:
    pci.driver.negotiate(ACCEPTED)

    pci.device.on_needs_reset("early")

    assert pci.driver.status() & 0x40
    assert pci.line.edges == 0


# --- VIRTIO_PCI_CAP_PCI_CFG (§4.1.4.9) ---

def test_virtio_pci_cfg_capability_reads_and_writes_bar(pci: PciRig) -> None:
    g, s, pos = pci.guest, pci.slot, pci.driver.caps[PCI_CFG].position
    g.cfg_write(s, pos + 4, 1, 0)                 # bar
    g.cfg_write(s, pos + 12, 4, 4)                # length
    g.cfg_write(s, pos + 8, 4, 0x04)              # offset: device_feature

    features_low = g.cfg_read(s, pos + 16, 4)
    g.cfg_write(s, pos + 12, 4, 1)
    g.cfg_write(s, pos + 8, 4, STATUS)
    g.cfg_write(s, pos + 16, 1, ACKNOWLEDGE)

    assert features_low == OFFERED & 0xFFFF_FFFF
    assert pci.driver.status() == ACKNOWLEDGE


def test_virtio_pci_cfg_capability_bad_window_is_ignored(pci: PciRig) -> None:
    g, s, pos = pci.guest, pci.slot, pci.driver.caps[PCI_CFG].position
    g.cfg_write(s, pos + 4, 1, 3)                 # a BAR the device does not have
    g.cfg_write(s, pos + 12, 4, 4)
    g.cfg_write(s, pos + 8, 4, 0)

    g.cfg_write(s, pos + 16, 4, 0xFFFF_FFFF)

    assert pci.driver.read(0x00, 4) == 0


# --- ioeventfds ---

def test_virtio_pci_ioeventfds_follow_bar_mapping(memory: GuestMemory, loop: EventLoop) -> None:
    rig = make_pci_rig(memory, loop=loop)
    layout = rig.transport.layout
    placed = rig.ioevents.live.copy()
    expected = {rig.driver.notify_address(q) for q in range(2)}

    rig.guest.set_bar(rig.slot, 0, 0xC800_0000)
    moved = rig.ioevents.addresses()
    rig.guest.disable(rig.slot)

    assert {e.addr for e in placed} == expected
    assert {(e.length, e.pio, e.datamatch) for e in placed} == {(2, False, None)}
    assert moved == {layout.notify_address(0xC800_0000, q) for q in range(2)}
    assert rig.ioevents.live == set()
    rig.transport.close()


def test_virtio_pci_doorbell_eventfd_notifies_on_loop_thread(memory: GuestMemory,
                                                             loop: EventLoop) -> None:
    rig = make_pci_rig(memory, loop=loop)
    bring_up(rig)
    threads: list[str] = []
    original = rig.device.queue_notify

    def notify_and_record_thread(index: int) -> None:
        threads.append(threading.current_thread().name)
        original(index)
    rig.device.queue_notify = notify_and_record_thread
    assert rig.transport.doorbells is not None
    fd = rig.transport.doorbells.fds[1]

    os.eventfd_write(fd, 1)

    assert wait_for(lambda: rig.device.notified() == [1])
    assert threads == ["test-io"]
    rig.transport.close()


def test_virtio_pci_doorbell_waits_for_transport_lock(memory: GuestMemory, loop: EventLoop) -> None:
    rig = make_pci_rig(memory, loop=loop)
    bring_up(rig)
    assert rig.transport.doorbells is not None

    with rig.transport.lock:
        os.eventfd_write(rig.transport.doorbells.fds[0], 1)
        time.sleep(0.05)
        during = rig.device.notified()

    assert during == []
    assert wait_for(lambda: rig.device.notified() == [0])
    rig.transport.close()


# --- with a real device and a guest-side ring ---

def test_virtio_pci_rng_request_completes_with_msi(memory: GuestMemory) -> None:
    rig = make_pci_rig(memory, VirtioRng(queue_size=16))
    ring = FakeDriver(memory, Queue(16), ring_base=0x30000)
    drv = rig.driver
    assert drv.negotiate(VIRTIO_F_VERSION_1)
    drv.enable_msix(2)
    drv.setup_queue(0, ring.desc_table, ring.avail_ring, ring.used_ring, vector=1)
    drv.enable_queue(0)
    drv.add_status(DRIVER_OK)
    posted = ring.add(writable=[64])

    drv.notify(0)

    assert ring.used() == [(posted.head, 64)]
    assert ring.read(posted.writable[0]) != bytes(64)
    assert rig.msi.vectors[1].sent == [(0xFEE0_0000, 0x41)]


def test_virtio_pci_used_signal_before_driver_ok_is_dropped(pci: PciRig) -> None:
    pci.driver.negotiate(ACCEPTED)

    pci.transport.signal_used_queue(0)

    assert pci.line.edges == 0
    assert pci.driver.read_isr() == 0


def test_virtio_pci_used_signal_after_reset_is_dropped(pci: PciRig) -> None:
    bring_up(pci, msix=False)
    pci.driver.reset()

    pci.transport.signal_used_queue(0)

    assert pci.line.level is False


def test_virtio_pci_ioevents_without_loop_is_a_wiring_error(memory: GuestMemory) -> None:
    with pytest.raises(ValueError, match="registrar and an event loop"):
        VirtioPciTransport(FakeDevice(), memory, RecordingMsiAllocator(),
                           ioevents=RecordingIoEventRegistrar())
