"""virtio-mmio version 2 (virtio 1.2 §4.2) driven as Linux's virtio_mmio
driver drives it."""

from __future__ import annotations

import os
import time

from kvmlite.arch.x86 import layout
from kvmlite.devices.virtio.device import VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK
from kvmlite.devices.virtio.queue import Queue
from kvmlite.devices.virtio.rng import VirtioRng
from kvmlite.devices.virtio.transport.mmio import cmdline_device
from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory
from tests.unit.devices.virtio.fakedriver import FakeDriver
from tests.unit.devices.virtio.transport.conftest import MMIO_BASE, MmioRig, make_mmio_rig
from tests.unit.devices.virtio.transport.fakes import CONFIG, FEATURE_A, OFFERED
from tests.unit.devices.virtio.transport.mmiodriver import (
    ACKNOWLEDGE, CONFIG as CONFIG_REG, CONFIG_GENERATION, DEVICE_ID, DRIVER, DRIVER_OK,
    FEATURES_OK, INTERRUPT_ACK, INTERRUPT_STATUS, QUEUE_NOTIFY, QUEUE_NUM_MAX, QUEUE_READY,
    QUEUE_SEL, SHM_LEN_HIGH, SHM_LEN_LOW, SHM_SEL, STATUS, VENDOR_ID, VirtioMmioDriver)

RINGS = [(0x10000, 0x11000, 0x12000), (0x20000, 0x21000, 0x22000)]
ACCEPTED = VIRTIO_F_VERSION_1 | FEATURE_A


def bring_up(rig: MmioRig) -> VirtioMmioDriver:
    drv = VirtioMmioDriver(rig)
    assert drv.probe()
    assert drv.negotiate(ACCEPTED)
    for index, rings in enumerate(RINGS):
        assert drv.setup_queue(index, *rings)
    drv.add_status(DRIVER_OK)
    return drv


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.002)
    return predicate()


def test_mmio_identity_registers(mmio: MmioRig) -> None:
    assert mmio.read(0x000) == 0x74726976
    assert mmio.read(0x004) == 2
    assert mmio.read(DEVICE_ID) == VIRTIO_ID_BLOCK
    assert mmio.read(VENDOR_ID) == 0x4C4D564B


def test_mmio_device_features_through_select(mmio: MmioRig) -> None:
    assert VirtioMmioDriver(mmio).device_features() == OFFERED


def test_mmio_linux_init_sequence_activates_device(mmio: MmioRig) -> None:
    drv = bring_up(mmio)

    assert mmio.device.calls[-1] == ("activate", ACCEPTED, (True, True))
    assert drv.status() == ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    queue = mmio.device.queues[0]
    assert (queue.desc_table, queue.avail_ring, queue.used_ring, queue.size) == (*RINGS[0], 16)


def test_mmio_queue_num_max_per_queue(mmio: MmioRig) -> None:
    maxima = []
    for index in range(3):
        mmio.write(QUEUE_SEL, index)
        maxima.append(mmio.read(QUEUE_NUM_MAX))

    assert maxima == [16, 8, 0]


def test_mmio_queue_ready_zero_disables_before_driver_ok(mmio: MmioRig) -> None:
    drv = VirtioMmioDriver(mmio)
    drv.negotiate(ACCEPTED)
    drv.setup_queue(0, *RINGS[0])

    mmio.write(QUEUE_READY, 0)

    assert mmio.read(QUEUE_READY) == 0


def test_mmio_queue_notify_reaches_device(mmio: MmioRig) -> None:
    bring_up(mmio)

    mmio.write(QUEUE_NOTIFY, 1)

    assert mmio.device.notified() == [1]


def test_mmio_used_buffer_raises_line_until_ack(mmio: MmioRig) -> None:
    drv = bring_up(mmio)

    mmio.transport.signal_used_queue(0)
    raised = mmio.irq.level
    status = drv.interrupt()

    assert (raised, status) == (True, 0x1)
    assert mmio.irq.level is False
    assert mmio.read(INTERRUPT_STATUS) == 0


def test_mmio_new_cause_while_line_high_gives_fresh_edge(mmio: MmioRig) -> None:
    bring_up(mmio)

    mmio.transport.signal_used_queue(0)
    mmio.transport.signal_used_queue(1)
    mmio.transport.signal_config_change()

    assert mmio.read(INTERRUPT_STATUS) == 0x3
    assert mmio.irq.history == [True, False, True]
    assert mmio.irq.edges == 2


def test_mmio_partial_ack_keeps_line_high(mmio: MmioRig) -> None:
    bring_up(mmio)
    mmio.transport.signal_used_queue(0)
    mmio.transport.signal_config_change()

    mmio.write(INTERRUPT_ACK, 0x1)
    still = mmio.irq.level
    mmio.write(INTERRUPT_ACK, 0x2)

    assert still is True
    assert mmio.irq.level is False


def test_mmio_config_change_bumps_generation(mmio: MmioRig) -> None:
    before = mmio.read(CONFIG_GENERATION)

    mmio.transport.signal_config_change()

    assert mmio.read(CONFIG_GENERATION) == before + 1


def test_mmio_config_space_reads_device_bytes_at_any_width(mmio: MmioRig) -> None:
    assert mmio.read(CONFIG_REG + 1, 1) == CONFIG[1]
    assert mmio.read(CONFIG_REG + 2, 2) == int.from_bytes(CONFIG[2:4], "little")
    assert mmio.read(CONFIG_REG + 4, 4) == int.from_bytes(CONFIG[4:8], "little")
    assert mmio.read(CONFIG_REG + 0x200, 4) == 0


def test_mmio_config_space_write_reaches_device(mmio: MmioRig) -> None:
    mmio.write(CONFIG_REG + 3, 0x7F, size=1)

    assert mmio.device.calls[-1] == ("write_config", 3, b"\x7f")


def test_mmio_reset_clears_interrupt_status_and_lowers_line(mmio: MmioRig) -> None:
    bring_up(mmio)
    mmio.transport.signal_used_queue(0)

    mmio.write(STATUS, 0)

    assert mmio.read(INTERRUPT_STATUS) == 0
    assert mmio.irq.level is False
    assert mmio.device.calls[-1] == ("reset",)
    mmio.write(QUEUE_SEL, 0)
    assert mmio.read(QUEUE_READY) == 0


def test_mmio_no_shared_memory_regions(mmio: MmioRig) -> None:
    mmio.write(SHM_SEL, 0)

    assert (mmio.read(SHM_LEN_LOW), mmio.read(SHM_LEN_HIGH)) == (0xFFFF_FFFF, 0xFFFF_FFFF)


def test_mmio_needs_reset_sets_status_and_interrupts(mmio: MmioRig) -> None:
    bring_up(mmio)

    mmio.device.on_needs_reset("broken ring")

    assert mmio.read(STATUS) & 0x40
    assert mmio.read(INTERRUPT_STATUS) & 0x2
    mmio.write(QUEUE_NOTIFY, 0)
    assert mmio.device.notified() == []


def test_mmio_attach_registers_window_and_doorbells(memory: GuestMemory, loop: EventLoop) -> None:
    rig = make_mmio_rig(memory, loop=loop)

    found = rig.bus.find(MMIO_BASE + layout.VIRTIO_MMIO_SIZE - 1)
    events = {(e.addr, e.length, e.datamatch) for e in rig.ioevents.live}

    assert found is not None and found[0].length == layout.VIRTIO_MMIO_SIZE
    assert events == {(MMIO_BASE + 0x50, 4, 0), (MMIO_BASE + 0x50, 4, 1)}
    assert rig.transport.lock is rig.bus.lock_of(rig.transport)
    rig.transport.close()
    assert rig.ioevents.live == set()


def test_mmio_doorbell_eventfd_notifies_device(memory: GuestMemory, loop: EventLoop) -> None:
    rig = make_mmio_rig(memory, loop=loop)
    bring_up(rig)
    assert rig.transport.doorbells is not None

    os.eventfd_write(rig.transport.doorbells.fds[1], 1)

    assert wait_for(lambda: rig.device.notified() == [1])
    rig.transport.close()


def test_mmio_cmdline_fragment_matches_linux_format() -> None:
    assert cmdline_device(0xD000_0000, 16) == "virtio_mmio.device=4K@0xd0000000:16"
    assert cmdline_device(0xD000_1000, 17, size=0x200) == "virtio_mmio.device=512@0xd0001000:17"


def test_mmio_rng_request_completes_and_interrupts(memory: GuestMemory) -> None:
    rig = make_mmio_rig(memory, VirtioRng(queue_size=16))
    ring = FakeDriver(memory, Queue(16), ring_base=0x30000)
    drv = VirtioMmioDriver(rig)
    assert drv.negotiate(VIRTIO_F_VERSION_1)
    assert drv.setup_queue(0, ring.desc_table, ring.avail_ring, ring.used_ring)
    drv.add_status(DRIVER_OK)
    posted = ring.add(writable=[32])

    rig.write(QUEUE_NOTIFY, 0)

    assert ring.used() == [(posted.head, 32)]
    assert rig.irq.level is True
    assert drv.interrupt() == 0x1


def test_mmio_used_signal_before_driver_ok_is_dropped(mmio: MmioRig) -> None:
    VirtioMmioDriver(mmio).negotiate(ACCEPTED)

    mmio.transport.signal_used_queue(0)

    assert mmio.read(INTERRUPT_STATUS) == 0
    assert mmio.irq.edges == 0
