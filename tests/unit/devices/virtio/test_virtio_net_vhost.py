"""virtio-net on vhost-net, without a /dev/vhost-net: a fake that records
its ioctls stands in for the kernel, and a real transport (virtio-pci on a
PCI root, virtio-mmio on a bus) with its doorbell eventfds on a real event
loop, so the fds handed over are the ones a VM would hand over.

What is checked: the features offered (vhost's ∩ the device's, plus what
the device and the tap serve), the activation's ioctls in order and with
their arguments (memory table, ring addresses translated to the VMM's,
kick = the queue's doorbell eventfd, call = the vector's irqfd or an
eventfd the loop turns into an interrupt), the backend never read by the
device, the reset's ioctls in order and the kicks given back to the loop,
vector changes after DRIVER_OK, and a failing ioctl.
"""

from __future__ import annotations

import os
import select
import time
from typing import Iterator

import pytest

from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory
from kvmlite.devices.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1
from kvmlite.devices.virtio.net import (OFFLOAD_FEATURES, RECEIVEQ, TRANSMITQ, VIRTIO_NET_F_CSUM,
                                        VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
                                        VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VirtioNet)
from kvmlite.devices.virtio.net_vhost import VHOST_FILE_UNBIND
from kvmlite.devices.virtio.queue import Queue
from tests.unit.devices.virtio.fakedriver import (FakeDriver, FakeNetBackend, NeedsResetRecorder,
                                                  RecordingInterrupt)
from tests.unit.devices.virtio.transport.conftest import MmioRig, PciRig, make_mmio_rig, make_pci_rig
from tests.unit.devices.virtio.transport.mmiodriver import VirtioMmioDriver
from tests.unit.devices.virtio.transport.pcidriver import DRIVER_OK, NO_VECTOR, Q_MSIX, Q_SELECT

MAC = bytes.fromhex("525400abcdef")
QUEUE = 16
RAM = 8 << 20
RINGS = [(0x10000, 0x11000, 0x12000), (0x20000, 0x21000, 0x22000)]
VHOST_NET_F_VIRTIO_NET_HDR = 1 << 27
VHOST_F_LOG_ALL = 1 << 26
VIRTIO_F_ANY_LAYOUT = 1 << 27
#: what Linux 6.1's vhost-net answers to VHOST_GET_FEATURES (less ACCESS_PLATFORM)
KERNEL_FEATURES = (VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_NET_F_MRG_RXBUF
                   | VHOST_F_LOG_ALL | VIRTIO_F_ANY_LAYOUT | VHOST_NET_F_VIRTIO_NET_HDR | 1 << 24)
LINUX_ACCEPTS = (VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_NET_F_MRG_RXBUF
                 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM)


class FakeVhostNet:
    """A :class:`~kvmlite.devices.virtio.net_vhost.VhostNetKernel` that
    records each ioctl as ``(name, args...)``; ``fail`` names one to refuse."""

    def __init__(self, features: int = KERNEL_FEATURES, fail: str | None = None) -> None:
        self.features = features
        self.fail = fail
        self.calls: list[tuple] = []
        self.kicks: dict[int, int] = {}         # what vhost would poll and write now
        self.callfds: dict[int, int] = {}

    def _record(self, name: str, *args: object) -> None:
        self.calls.append((name, *args))
        if name == self.fail:
            raise OSError(22, f"{name} refused")

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def set_owner(self) -> None:
        self._record("set_owner")

    def get_features(self) -> int:
        return self.features

    def set_features(self, features: int) -> None:
        self._record("set_features", features)

    def set_mem_table(self, regions) -> None:
        self._record("set_mem_table", list(regions))

    def set_vring_num(self, index: int, num: int) -> None:
        self._record("set_vring_num", index, num)

    def set_vring_base(self, index: int, base: int) -> None:
        self._record("set_vring_base", index, base)

    def get_vring_base(self, index: int) -> int:
        self._record("get_vring_base", index)
        return 0

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int, flags: int = 0, log: int = 0) -> None:
        self._record("set_vring_addr", index, desc, used, avail)

    def set_vring_kick(self, index: int, fd: int) -> None:
        self._record("set_vring_kick", index, fd)
        self.kicks[index] = fd

    def set_vring_call(self, index: int, fd: int) -> None:
        self._record("set_vring_call", index, fd)
        self.callfds[index] = fd

    def set_backend(self, index: int, fd: int) -> None:
        self._record("set_backend", index, fd)


def signalled(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.002)
    return predicate()


def settle(loop: EventLoop) -> None:
    """Let the loop run whatever is ready (twice round, to be sure)."""
    for _ in range(2):
        done = []
        loop.call_soon(lambda: done.append(1))
        assert wait_for(lambda: done)


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    ev = EventLoop("test-net-vhost")
    ev.start()
    yield ev
    ev.close()


@pytest.fixture
def ram() -> Iterator[GuestMemory]:
    mem = GuestMemory(RAM)
    yield mem
    mem.close()


def make_net(loop: EventLoop, vhost: FakeVhostNet, **backend: object) -> tuple[VirtioNet, FakeNetBackend]:
    back = FakeNetBackend(offloads=OFFLOAD_FEATURES, **backend)
    return VirtioNet(back, MAC, loop, queue_size=QUEUE, vhost=vhost), back


def pci_up(memory: GuestMemory, loop: EventLoop, vhost: FakeVhostNet,
           features: int = LINUX_ACCEPTS) -> tuple[PciRig, FakeNetBackend]:
    """virtio_net's probe over virtio-pci with MSI-X: config vector 0,
    receiveq vector 1, transmitq vector 2, then DRIVER_OK."""
    device, backend = make_net(loop, vhost)
    rig = make_pci_rig(memory, device=device, loop=loop)
    drv = rig.driver
    assert drv.negotiate(features)
    drv.enable_msix(3)
    for index, rings in enumerate(RINGS):
        assert drv.setup_queue(index, *rings, vector=index + 1) == index + 1
        drv.enable_queue(index)
    drv.add_status(DRIVER_OK)
    return rig, backend


def close_rig(rig: PciRig | MmioRig, backend: FakeNetBackend) -> None:
    rig.device.close()
    rig.transport.close()
    backend.close()


# --- features ---

def test_vhost_net_offer_is_vhost_features_plus_device_side(loop: EventLoop) -> None:
    plain = VirtioNet(FakeNetBackend(offloads=OFFLOAD_FEATURES, mtu=1400), MAC, loop)
    device, backend = make_net(loop, FakeVhostNet(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF), mtu=1400)

    offered = device.device_features()

    assert offered == plain.device_features() & ~(VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC)
    assert offered & (VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MTU | VIRTIO_NET_F_CSUM) \
        == VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MTU | VIRTIO_NET_F_CSUM
    assert not offered & (VHOST_NET_F_VIRTIO_NET_HDR | VHOST_F_LOG_ALL)   # vhost's own bits stay vhost's
    plain.close()
    device.close()
    backend.close()


def test_vhost_net_with_a_full_kernel_offers_what_the_plain_device_does(loop: EventLoop) -> None:
    plain = VirtioNet(FakeNetBackend(offloads=OFFLOAD_FEATURES), MAC, loop)
    device, backend = make_net(loop, FakeVhostNet())
    assert device.device_features() == plain.device_features()
    plain.close()
    device.close()
    backend.close()


def test_vhost_net_without_version_1_is_refused(loop: EventLoop) -> None:
    with pytest.raises(ValueError, match="VIRTIO_F_VERSION_1"):
        make_net(loop, FakeVhostNet(VIRTIO_NET_F_MRG_RXBUF))


def test_vhost_net_needs_a_backend_with_a_header(loop: EventLoop) -> None:
    with pytest.raises(ValueError, match="header"):
        make_net(loop, FakeVhostNet(), vnet_hdr=False)


# --- activation over virtio-pci with MSI-X ---

def test_vhost_net_pci_activation_ioctls_in_order_with_host_addresses(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = FakeVhostNet()
    rig, backend = pci_up(ram, loop, vhost)
    kicks = rig.transport.doorbells.fds
    irqfds = [rig.msi.vectors[1].irqfd(), rig.msi.vectors[2].irqfd()]
    host = ram.regions[0].host_addr

    expected: list[tuple] = [("set_owner",), ("set_features", LINUX_ACCEPTS & KERNEL_FEATURES),
                             ("set_mem_table", [(0, RAM, host)])]
    for index, (desc, avail, used) in enumerate(RINGS):
        expected += [("set_vring_num", index, QUEUE), ("set_vring_base", index, 0),
                     ("set_vring_addr", index, host + desc, host + used, host + avail),
                     ("set_vring_kick", index, kicks[index]), ("set_vring_call", index, irqfds[index])]
    expected += [("set_backend", RECEIVEQ, backend.fileno()), ("set_backend", TRANSMITQ, backend.fileno())]
    assert vhost.calls == expected
    assert backend.negotiated == [LINUX_ACCEPTS]            # TUNSETOFFLOAD as the driver negotiated
    close_rig(rig, backend)


def test_vhost_net_pci_set_features_keeps_only_what_vhost_knows(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = FakeVhostNet()
    rig, backend = pci_up(ram, loop, vhost)
    features = dict((c[0], c[1]) for c in vhost.calls if len(c) > 1)["set_features"]
    assert features == VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_NET_F_MRG_RXBUF
    close_rig(rig, backend)


def test_vhost_net_doorbells_reach_vhost_not_the_loop(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = FakeVhostNet()
    rig, backend = pci_up(ram, loop, vhost)
    kick = vhost.kicks[TRANSMITQ]
    notified: list[int] = []
    rig.device.queue_notify = notified.append

    os.eventfd_write(kick, 1)            # what KVM's ioeventfd does on the guest's notify write
    settle(loop)

    assert notified == [], "the device's loop read a doorbell vhost owns"
    assert signalled(kick)
    close_rig(rig, backend)


def test_vhost_net_trapped_notify_is_forwarded_to_the_kick(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = FakeVhostNet()
    rig, backend = pci_up(ram, loop, vhost)
    kick = vhost.kicks[RECEIVEQ]

    rig.driver.guest.mem_write(rig.driver.notify_address(RECEIVEQ), 2, RECEIVEQ)   # no ioeventfd: a trap

    assert signalled(kick)
    close_rig(rig, backend)


def test_vhost_net_device_never_reads_the_backend(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = FakeVhostNet()
    rig, backend = pci_up(ram, loop, vhost)

    backend.feed(bytes(64))
    settle(loop)

    assert backend.calls["recv_into"] == 0
    assert rig.device.stats() == {"vhost": 1}
    close_rig(rig, backend)


def test_vhost_net_set_owner_only_at_the_first_activation(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = FakeVhostNet()
    rig, backend = pci_up(ram, loop, vhost)
    drv = rig.driver
    drv.reset()
    assert drv.negotiate(LINUX_ACCEPTS)
    for index, rings in enumerate(RINGS):
        drv.setup_queue(index, *rings, vector=index + 1)
        drv.enable_queue(index)
    drv.add_status(DRIVER_OK)

    assert vhost.names().count("set_owner") == 1
    assert vhost.names().count("set_mem_table") == 2
    close_rig(rig, backend)


# --- reset ---

def test_vhost_net_reset_unbinds_in_order_and_gives_kicks_back(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = FakeVhostNet()
    rig, backend = pci_up(ram, loop, vhost)
    kicks = list(rig.transport.doorbells.fds)
    vhost.calls.clear()

    rig.driver.reset()

    assert vhost.calls == [("set_backend", 0, VHOST_FILE_UNBIND), ("set_backend", 1, VHOST_FILE_UNBIND),
                           ("get_vring_base", 0), ("get_vring_base", 1),
                           ("set_vring_kick", 0, VHOST_FILE_UNBIND), ("set_vring_call", 0, VHOST_FILE_UNBIND),
                           ("set_vring_kick", 1, VHOST_FILE_UNBIND), ("set_vring_call", 1, VHOST_FILE_UNBIND)]
    os.eventfd_write(kicks[TRANSMITQ], 1)
    assert wait_for(lambda: not signalled(kicks[TRANSMITQ])), "the loop did not take the doorbell back"
    close_rig(rig, backend)


def test_vhost_net_close_tears_down_before_the_transport(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = FakeVhostNet()
    rig, backend = pci_up(ram, loop, vhost)
    vhost.calls.clear()

    rig.device.close()

    assert vhost.names()[:2] == ["set_backend", "set_backend"]
    assert rig.transport.doorbells.fds, "the transport's eventfds are still open"
    rig.transport.close()
    backend.close()


# --- interrupts ---

def test_vhost_net_vector_change_after_driver_ok_moves_the_call(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = FakeVhostNet()
    rig, backend = pci_up(ram, loop, vhost)
    vhost.calls.clear()
    drv = rig.driver

    drv.write(Q_SELECT, 2, TRANSMITQ)
    drv.write(Q_MSIX, 2, 1)              # the transmitq now shares the receiveq's vector

    new = rig.msi.vectors[1].irqfd()
    assert vhost.calls == [("set_vring_call", TRANSMITQ, new)]
    assert signalled(new), "an interrupt raised during the switch would be lost"
    close_rig(rig, backend)


def test_vhost_net_no_vector_or_msix_off_goes_through_the_loop(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = FakeVhostNet()
    rig, backend = pci_up(ram, loop, vhost)
    drv = rig.driver
    drv.write(Q_SELECT, 2, RECEIVEQ)
    drv.write(Q_MSIX, 2, NO_VECTOR)
    assert vhost.callfds[RECEIVEQ] != rig.msi.vectors[1].irqfd()

    drv.msix_control(0)                  # MSI-X off: INTx
    os.eventfd_write(vhost.callfds[TRANSMITQ], 1)        # vhost used a transmit buffer

    assert wait_for(lambda: rig.line.level)
    assert drv.read_isr() & 1
    close_rig(rig, backend)


def test_vhost_net_mmio_call_is_read_on_the_loop(memory: GuestMemory, loop: EventLoop) -> None:
    vhost = FakeVhostNet()
    device, backend = make_net(loop, vhost)
    rig = make_mmio_rig(memory, device=device, loop=loop)
    drv = VirtioMmioDriver(rig)
    assert drv.negotiate(LINUX_ACCEPTS)
    for index, rings in enumerate(RINGS):
        assert drv.setup_queue(index, *rings, size=QUEUE)
    drv.add_status(DRIVER_OK)
    assert vhost.kicks == {0: rig.transport.doorbells.fds[0], 1: rig.transport.doorbells.fds[1]}

    os.eventfd_write(vhost.callfds[RECEIVEQ], 1)

    assert wait_for(lambda: rig.irq.level)
    assert drv.interrupt() & 1
    close_rig(rig, backend)


# --- without a transport's eventfds, and failures ---

def direct(memory: GuestMemory, loop: EventLoop, vhost: FakeVhostNet) -> tuple[VirtioNet, FakeNetBackend,
                                                                              RecordingInterrupt, list[Queue]]:
    """The device activated directly by the fake driver (no transport: no
    doorbell eventfds, an interrupt with no irqfd)."""
    device, backend = make_net(loop, vhost)
    interrupt = RecordingInterrupt()
    interrupt.queue_irqfd = lambda index: None
    queues = [Queue(QUEUE), Queue(QUEUE)]
    FakeDriver(memory, queues[0], ring_base=0x1000, heap_end=RAM // 2)
    FakeDriver(memory, queues[1], ring_base=RAM // 2)
    device.activate(memory, queues, LINUX_ACCEPTS, interrupt)
    return device, backend, interrupt, queues


def test_vhost_net_without_doorbells_makes_its_own_kick(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = FakeVhostNet()
    device, backend, interrupt, _ = direct(ram, loop, vhost)
    kick = vhost.kicks[TRANSMITQ]

    device.queue_notify(TRANSMITQ)

    assert signalled(kick)
    os.eventfd_write(vhost.callfds[TRANSMITQ], 1)
    assert wait_for(lambda: interrupt.used == [TRANSMITQ])
    device.close()
    backend.close()


def test_vhost_net_refused_ioctl_asks_for_reset_and_undoes(ram: GuestMemory, loop: EventLoop) -> None:
    vhost = FakeVhostNet(fail="set_backend")
    device, backend = make_net(loop, vhost)
    resets = NeedsResetRecorder()
    device.on_needs_reset = resets
    interrupt = RecordingInterrupt()
    interrupt.queue_irqfd = lambda index: None
    queues = [Queue(QUEUE), Queue(QUEUE)]
    FakeDriver(ram, queues[0], ring_base=0x1000, heap_end=RAM // 2)
    FakeDriver(ram, queues[1], ring_base=RAM // 2)

    device.activate(ram, queues, LINUX_ACCEPTS, interrupt)

    assert len(resets.reasons) == 1 and "vhost-net refused the queues" in resets.reasons[0]
    after = vhost.names()[vhost.names().index("set_backend") + 1:]
    assert after[:2] == ["get_vring_base", "get_vring_base"]
    assert ("set_vring_kick", 0, VHOST_FILE_UNBIND) in vhost.calls
    device.queue_notify(RECEIVEQ)            # not active: nothing to forward to
    device.close()
    backend.close()
