"""virtio-net's data path handed to the kernel: vhost-net
(drivers/vhost/net.c, the ioctls of linux/vhost.h).

With vhost the kernel moves frames between the guest's rings and the tap:
a vhost worker thread (``vhost-<tid>``, made at VHOST_SET_OWNER) pops the
transmitq and writes the tap, reads the tap into the receiveq, and signals
the driver.  kvmlite only sets it up at DRIVER_OK and takes it down at
reset.  The device model reaches /dev/vhost-net through
:class:`VhostNetKernel`, a protocol :class:`kvmlite.net.vhost.VhostNet`
satisfies; the VMM makes one and passes it in.

Who owns which fd, and when:

* ``/dev/vhost-net``: the VMM opens it and closes it with the VM, after the
  device.  VHOST_SET_OWNER is called once, at the first activation (from
  the vCPU thread that wrote DRIVER_OK): it binds the instance to this
  process's memory and starts the worker.
* kick (the guest's notifications): each queue's doorbell eventfd, which
  the transport registered as a KVM ioeventfd at the queue's notify
  address.  At activation the device takes it from the transport
  (``queue_kicks.take``): the device's loop stops reading it and vhost
  polls it.  A notification that still reaches the device (a trapped
  notify write, or one the loop had read just before) is forwarded by
  writing the same eventfd.  At reset vhost lets go of it
  (SET_VRING_KICK -1) and the loop reads it again (``give_back``).  Without
  doorbell eventfds (no ioeventfds) the device makes an eventfd of its own
  and every trapped notify writes it.
* call (used-buffer interrupts): on virtio-pci with MSI-X, the irqfd of the
  queue's vector (``interrupt.queue_irqfd``): vhost's write is injected by
  KVM, no Python involved, and the vector keeps MSI-X masking semantics by
  deassigning its irqfd while masked (kvmlite.vmm.interrupts).  Otherwise
  (virtio-mmio, INTx, no vector) an eventfd made here, which the device's
  loop reads and turns into ``signal_used_queue``: correct, one loop
  wake-up per interrupt.  The vector's irqfd stays the transport's; the
  eventfds made here live as long as the device (a reset only stops
  reading them), so a loop callback racing a reset never meets a closed or
  reused fd.  When the driver changes a vector or MSI-X after DRIVER_OK
  (``interrupts_changed``), the call fd is asked for again and replaced
  with SET_VRING_CALL, and the new one signalled once: a spurious interrupt
  is harmless, a lost one is not.
* the tap: the VMM's backend.  VHOST_NET_SET_BACKEND gives vhost its own
  reference; the device no longer reads or writes it.  Its header (12
  bytes, ``struct virtio_net_hdr_v1``: VERSION_1 or MRG_RXBUF) is carried
  by the tap (VHOST_NET_F_VIRTIO_NET_HDR is never set), so checksum and
  segmentation offloads pass through as without vhost (TUNSETOFFLOAD at
  activation, as before).

Activation (VHOST_SET_VRING_NUM/BASE are refused while a backend is bound,
so a reset always unbinds first): SET_OWNER (once), SET_FEATURES (the
driver's features that vhost offered), SET_MEM_TABLE (every RAM region:
guest address, size, the VMM's address), then per ready queue
SET_VRING_NUM, SET_VRING_BASE (the device's next available index: 0 after
a reset), SET_VRING_ADDR (the VMM's addresses of the three ring parts),
SET_VRING_KICK, SET_VRING_CALL, and last NET_SET_BACKEND with the tap for
each queue.  Reset: NET_SET_BACKEND -1 for each queue (the worker stops
touching the rings), GET_VRING_BASE (where it stopped; logged), then
SET_VRING_KICK and SET_VRING_CALL -1, kicks given back, loop readers of the
call eventfds removed.  Any ioctl failing at activation undoes what was
done and the device asks for a reset; failures while taking it down are
logged and the rest goes on.

Snapshots (:meth:`VhostDataPath.ring_bases`): the ring positions live in
the kernel, so saving the device unbinds the tap (the worker stops, every
chain it took is in the used ring), reads GET_VRING_BASE for each queue,
gives it back with SET_VRING_BASE and binds the tap again; the device
copies the bases (and the used index from guest memory) into its queues,
which the transport then saves.  A restored device's activation passes the
saved next available index to SET_VRING_BASE as any activation does.

Threads: ``start``, ``stop`` and ``interrupts_changed`` run under the
device's lock (and the transport's); ``kick`` runs on whichever thread
notified and reads only what ``start`` published; the call callbacks run on
the loop thread.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

from kvmlite.base import eventfd
from kvmlite.base.eventloop import EventLoop

if TYPE_CHECKING:
    from kvmlite.base.memory import GuestMemory
    from kvmlite.devices.virtio.device import QueueKicks, VirtioInterrupt
    from kvmlite.devices.virtio.queue import Queue

log = logging.getLogger(__name__)

#: linux/vhost.h: a file descriptor of -1 unbinds (kick, call, backend)
VHOST_FILE_UNBIND = -1
#: virtio 1.2 §2.7: bytes per descriptor, and the rings' fixed parts
DESC_BYTES = 16
AVAIL_BYTES = (6, 2)            # flags, idx, used_event + 2 per entry
USED_BYTES = (6, 8)             # flags, idx, avail_event + 8 per entry


class VhostNetKernel(Protocol):
    """``/dev/vhost-net``, one method per ioctl; each raises ``OSError``
    on failure (:class:`kvmlite.net.vhost.VhostNet` raises NetError)."""

    def set_owner(self) -> None: ...

    def get_features(self) -> int: ...

    def set_features(self, features: int) -> None: ...

    def set_mem_table(self, regions: Sequence[tuple[int, int, int]]) -> None:
        """``(guest_phys_addr, memory_size, userspace_addr)`` each."""

    def set_vring_num(self, index: int, num: int) -> None: ...

    def set_vring_base(self, index: int, base: int) -> None: ...

    def get_vring_base(self, index: int) -> int: ...

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int, flags: int = 0,
                       log: int = 0) -> None: ...

    def set_vring_kick(self, index: int, fd: int) -> None: ...

    def set_vring_call(self, index: int, fd: int) -> None: ...

    def set_backend(self, index: int, fd: int) -> None: ...


@dataclass
class _Ring:
    """One queue handed to vhost."""

    index: int
    kick: int = VHOST_FILE_UNBIND
    doorbell: bool = False      # ``kick`` is the transport's: give it back at stop
    call: int = VHOST_FILE_UNBIND
    loop_call: bool = False     # ``call`` is ours, read on the loop
    bound: bool = False         # NET_SET_BACKEND done


class VhostDataPath:
    """The vhost-net instance behind one virtio-net device (see the module
    doc).  ``features`` is what vhost offers (VHOST_GET_FEATURES)."""

    def __init__(self, vhost: VhostNetKernel, loop: EventLoop, name: str = "virtio-net") -> None:
        self.vhost = vhost
        self.loop = loop
        self.name = name
        self.features = vhost.get_features()
        self._owned = False
        self._rings: dict[int, _Ring] = {}
        self._interrupt: VirtioInterrupt | None = None
        self._kicks: QueueKicks | None = None
        self._own_kicks: dict[int, int] = {}    # eventfds made here, closed by close()
        self._own_calls: dict[int, int] = {}

    @property
    def running(self) -> bool:
        return bool(self._rings)

    # --- activation ---

    def start(self, memory: "GuestMemory", queues: Sequence["Queue | None"], features: int,
              interrupt: "VirtioInterrupt", kicks: "QueueKicks | None", backend_fd: int) -> None:
        """Hand ``queues`` (index order; None for a queue the driver left
        off) to vhost, serving them with ``backend_fd``.  Raises ``OSError``
        after undoing what was done."""
        self._interrupt, self._kicks = interrupt, kicks
        try:
            if not self._owned:
                self.vhost.set_owner()
                self._owned = True
            self.vhost.set_features(features & self.features)
            self.vhost.set_mem_table([(r.guest_addr, r.size, r.host_addr) for r in memory.regions])
            for index, queue in enumerate(queues):
                if queue is not None:
                    self._start_ring(memory, index, queue)
            for ring in self._rings.values():
                self.vhost.set_backend(ring.index, backend_fd)
                ring.bound = True
        except OSError:
            self.stop()
            raise

    def _start_ring(self, memory: "GuestMemory", index: int, queue: "Queue") -> None:
        ring = self._rings[index] = _Ring(index)
        size = queue.size
        self.vhost.set_vring_num(index, size)
        self.vhost.set_vring_base(index, queue.next_avail)
        self.vhost.set_vring_addr(
            index,
            desc=memory.host_address(queue.desc_table, DESC_BYTES * size),
            used=memory.host_address(queue.used_ring, USED_BYTES[0] + USED_BYTES[1] * size),
            avail=memory.host_address(queue.avail_ring, AVAIL_BYTES[0] + AVAIL_BYTES[1] * size))
        taken = self._kicks.take(index) if self._kicks is not None else None
        ring.kick, ring.doorbell = (taken, True) if taken is not None else (self._own_kick(index), False)
        self.vhost.set_vring_kick(index, ring.kick)
        self._set_call(ring, self._interrupt.queue_irqfd(index))

    def _own_kick(self, index: int) -> int:
        if index not in self._own_kicks:
            self._own_kicks[index] = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        return self._own_kicks[index]

    def _set_call(self, ring: _Ring, irqfd: int | None) -> None:
        """SET_VRING_CALL with ``irqfd``, or with an eventfd read on the
        loop when it is None; the loop reads only what vhost writes."""
        fd = irqfd if irqfd is not None else self._own_call(ring.index)
        self.vhost.set_vring_call(ring.index, fd)
        if ring.loop_call and fd != ring.call:
            self.loop.remove_reader(ring.call)
        if irqfd is None and not ring.loop_call:
            self.loop.add_reader(fd, lambda: self._called(ring.index, fd))
        ring.call, ring.loop_call = fd, irqfd is None

    def _own_call(self, index: int) -> int:
        if index not in self._own_calls:
            self._own_calls[index] = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        return self._own_calls[index]

    def _called(self, index: int, fd: int) -> None:
        """Loop thread: vhost used buffers of queue ``index`` and wants the
        driver told."""
        interrupt = self._interrupt
        if eventfd.drain(fd) and interrupt is not None:
            interrupt.signal_used_queue(index)

    # --- while running ---

    def kick(self, index: int) -> None:
        """A notification of queue ``index`` reached the device (any thread):
        pass it to vhost."""
        ring = self._rings.get(index)
        if ring is not None:
            eventfd.signal(ring.kick)

    def interrupts_changed(self) -> None:
        """The driver changed a vector or MSI-X: ask for each queue's call
        fd again and replace the ones that changed.  Raises ``OSError``."""
        if self._interrupt is None:
            return
        for ring in self._rings.values():
            irqfd = self._interrupt.queue_irqfd(ring.index)
            if (irqfd is None) == ring.loop_call and (irqfd is None or irqfd == ring.call):
                continue
            self._set_call(ring, irqfd)
            eventfd.signal(ring.call)

    # --- snapshots ---

    def ring_bases(self, backend_fd: int) -> dict[int, int]:
        """Where vhost stands in each ring it serves, for a snapshot, as
        QEMU's vhost_virtqueue_stop finds it: NET_SET_BACKEND -1 stops the
        worker (vhost-net puts every chain it took in the used ring first,
        zero-copy sends included), GET_VRING_BASE gives its next available
        index, then SET_VRING_BASE with that index and NET_SET_BACKEND with
        the tap start it again where it stopped (binding re-reads the used
        index from guest memory).  Returns ``{queue index: base}``.  Raises
        ``OSError``; the rings are bound again whatever failed."""
        rings = [ring for ring in sorted(self._rings.values(), key=lambda r: r.index) if ring.bound]
        bases: dict[int, int] = {}
        try:
            for ring in rings:
                self.vhost.set_backend(ring.index, VHOST_FILE_UNBIND)
                ring.bound = False
            for ring in rings:
                bases[ring.index] = self.vhost.get_vring_base(ring.index) & 0xFFFF
            for ring in rings:
                self.vhost.set_vring_base(ring.index, bases[ring.index])
        finally:
            failed: OSError | None = None
            for ring in rings:
                if ring.bound:
                    continue
                try:
                    self.vhost.set_backend(ring.index, backend_fd)
                    ring.bound = True
                except OSError as exc:
                    log.warning("%s: queue %d: VHOST_NET_SET_BACKEND again failed: %s", self.name, ring.index, exc)
                    failed = failed or exc
            if failed is not None:
                raise failed
        return bases

    # --- reset ---

    def stop(self) -> None:
        """Take the queues back from vhost (see the module doc)."""
        rings = sorted(self._rings.values(), key=lambda r: r.index)
        for ring in rings:
            if ring.bound:
                self._undo("VHOST_NET_SET_BACKEND", self.vhost.set_backend, ring.index, VHOST_FILE_UNBIND)
        for ring in rings:
            try:
                base = self.vhost.get_vring_base(ring.index)
            except OSError as exc:
                log.warning("%s: queue %d: VHOST_GET_VRING_BASE failed: %s", self.name, ring.index, exc)
            else:
                log.debug("%s: queue %d: vhost stopped at available index %d", self.name, ring.index, base)
        for ring in rings:
            if ring.kick != VHOST_FILE_UNBIND:
                self._undo("VHOST_SET_VRING_KICK", self.vhost.set_vring_kick, ring.index, VHOST_FILE_UNBIND)
            if ring.call != VHOST_FILE_UNBIND:
                self._undo("VHOST_SET_VRING_CALL", self.vhost.set_vring_call, ring.index, VHOST_FILE_UNBIND)
        for ring in rings:
            if ring.doorbell and self._kicks is not None:
                self._kicks.give_back(ring.index)
            if ring.loop_call:
                self.loop.remove_reader(ring.call)
        self._rings, self._interrupt, self._kicks = {}, None, None

    def _undo(self, name: str, call, index: int, fd: int) -> None:
        try:
            call(index, fd)
        except OSError as exc:
            log.warning("%s: queue %d: %s %d failed: %s", self.name, index, name, fd, exc)

    def close(self) -> None:
        """Stop, and close the eventfds made here (not vhost: its owner
        closes it)."""
        self.stop()
        for fds in (self._own_kicks, self._own_calls):
            for fd in fds.values():
                os.close(fd)
            fds.clear()
