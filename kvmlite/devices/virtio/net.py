"""virtio-net (virtio 1.2 §5.1): one receiveq, one transmitq, a host backend.

The backend (a tap device, passt...) is given to the constructor and is only
required to satisfy :class:`NetBackend`; the device never imports the code
that made it.  No control queue and no multiqueue (§5.1.2: receiveq1 is
queue 0, transmitq1 queue 1).

Features (§5.1.3): MAC, STATUS, MRG_RXBUF, MTU when the backend names one,
and the checksum and segmentation offloads only as far as
``backend.offloads()`` allows (none at all without ``backend.vnet_hdr``:
then the backend cannot carry a header), trimmed so that no feature is
offered without the ones it depends on (§5.1.3.1).  A driver that accepts
a set violating §5.1.3.1 (GUEST_TSO4 without GUEST_CSUM, HOST_ECN without a
HOST_TSO...) is refused: ``activate`` asks the transport for
DEVICE_NEEDS_RESET instead of guessing which half the driver meant (the
transport has no hook to refuse FEATURES_OK; Linux never accepts such a
set, so only a broken or hostile driver meets this).

Threads and locks.  All the work runs on ``loop`` (the device's event loop,
which also serves its ioeventfds), never on a vCPU thread: a
``queue_notify`` arriving on another thread is handed to the loop with
``call_soon``.  The loop watches the backend's fd for frames and, while a
frame waits for room in the backend, for writability.  ``_lock`` guards the
activation, the frame held for the receiveq, the fd registrations and the
counters; every backend call is made with it held (so the backend is never
called twice at once), and the interrupt and ``on_needs_reset`` are called
with it released.  Order: the transport's lock (``activate``, ``reset``,
``queue_notify``), then ``_lock``; the loop's own callbacks take ``_lock``
alone.  ``reset`` takes ``_lock``, so once it returns nothing touches guest
memory for the old activation.

Receive (§5.1.6.3, §5.1.6.4).  Frames are read one at a time into one
buffer big enough for a 64 KiB GSO frame and its header.  With MRG_RXBUF a
frame fills as many chains as it needs and ``num_buffers`` in its header
says how many; the chains are published with one used index update, so the
driver never sees some of them without the rest.  Without it each frame
takes one chain, and a frame that does not fit is dropped (``rx_dropped``)
and the chain returned with used length 0.  When the ring has no buffers
the frame read is kept, the backend's fd is no longer watched (nothing
spins, nothing more is read) and a receiveq notification resumes
(``rx_no_buffer`` counts these waits).  Frames arriving with no driver
ready, or with the link down, are read and dropped (``rx_dropped``), so
the host side never backs up.

Transmit (§5.1.6.2).  Each chain is a header and a frame, device-readable
only.  A malformed one (a writable descriptor, shorter than the header, a
frame too long for what was negotiated, header fields that make no sense or
ask for an offload not negotiated) is dropped, counted in ``tx_errors``
and returned with used length 0; the device goes on.  When the backend
cannot take a frame the device stops popping and waits for the fd to be
writable, then flushes and goes on; a frame it took only in part (a
stream backend keeps the tail) has the device wait for room the same way,
so the tail follows at once rather than with the guest's next frame.

Backend gone (``ConnectionError``, or any other ``OSError`` when reading
or flushing; a send that fails otherwise only loses that frame):
the link goes down (a configuration change is signalled), the fd is no
longer watched, one line is logged and the VM runs on; frames sent after
that are dropped (``tx_dropped``).

A malformed ring (a :class:`QueueError`) stops the activation and asks for
DEVICE_NEEDS_RESET, as the other devices do.

Snapshots (:meth:`VirtioNet.save_device_state`, docs/network.md).  The
restored VM gets a fresh backend built from its configuration (a new tap,
or the given ``tapif``; a new passt process), so connections through user
mode are lost, and frames in flight are dropped (the frame held for the
receiveq, a tail a stream backend kept), as a real NIC loses them.  The
device part is what the guest observes and the VMM keeps: the MAC in the
configuration space (served again even if the restored VM would make
another), the link as ``set_link`` left it (the driver reads it up when
the new backend is; a change from what it last read is signalled), the
MTU (a driver that negotiated VIRTIO_NET_F_MTU must get the same one), the
counters, and by head the chains popped and not returned: MRG_RXBUF
receive chains gathered for a frame wait for the next one, and the
transmit chain waiting for room goes to the new backend.  The negotiated
offloads reach the new tap because the transport's restore re-activates
the device through :meth:`VirtioNet.activate`, which calls
``backend.set_offloads`` (TUNSETOFFLOAD) with the driver's features as at
DRIVER_OK.  The saving VM keeps everything as it was and runs on.  Nothing
special is sent after a restore: VIRTIO_NET_F_GUEST_ANNOUNCE (§5.1.6.5.3),
which would have the guest send gratuitous ARPs, needs the control queue
(§5.1.3.1), which this device does not have; a bridge or passt learns the
guest's MAC from its next frame.  On vhost the positions are read back
from the kernel (see :mod:`.net_vhost`).

vhost (``vhost=``, :mod:`.net_vhost`): the kernel moves the frames.  The
device then offers only the ring and buffer features vhost supports
(VHOST_GET_FEATURES: VERSION_1, INDIRECT_DESC, EVENT_IDX, MRG_RXBUF) plus
those served here or by the tap (MAC, STATUS, MTU, the offloads), never
reads or writes the backend, and at activation hands both queues, their
doorbell eventfds and their interrupts to vhost; a reset takes them back.
It keeps no frame counters then (``stats()`` says ``vhost``), and
``set_link`` changes only what the driver reads: frames keep flowing.

Counters (:meth:`VirtioNet.stats`): ``*_packets`` and ``*_bytes`` count
frames delivered and their bytes, headers excluded; ``rx_dropped`` and
``tx_dropped`` frames that were well formed but had nowhere to go (no
driver, link down, backend gone, no buffer big enough, a reset);
``rx_errors`` and ``tx_errors`` frames or chains refused as malformed (a
frame longer than negotiated, a header at odds with the features, a
receive chain with readable descriptors, a frame the backend refused).
"""

from __future__ import annotations

import functools
import itertools
import logging
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from kvmlite.base.eventloop import EventLoop
from kvmlite.base.memory import GuestMemory, GuestMemoryError
from kvmlite.base.state import Reader, StateError, pack_bytes
from kvmlite.devices.virtio.device import (VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
                                           VIRTIO_ID_NET, VirtioDevice, VirtioInterrupt)
from kvmlite.devices.virtio.iov import Segments
from kvmlite.devices.virtio.net_vhost import VhostDataPath, VhostNetKernel
from kvmlite.devices.virtio.queue import (USED_ELEM_SIZE, DescriptorChain, Queue, QueueError, RingAddressError,
                                          pop_writable, pop_writable_many)
from kvmlite.devices.virtio.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

RECEIVEQ = 0
TRANSMITQ = 1

# §5.1.3: feature bits
VIRTIO_NET_F_CSUM = 1 << 0
VIRTIO_NET_F_GUEST_CSUM = 1 << 1
VIRTIO_NET_F_MTU = 1 << 3
VIRTIO_NET_F_MAC = 1 << 5
VIRTIO_NET_F_GUEST_TSO4 = 1 << 7
VIRTIO_NET_F_GUEST_TSO6 = 1 << 8
VIRTIO_NET_F_GUEST_ECN = 1 << 9
VIRTIO_NET_F_GUEST_UFO = 1 << 10
VIRTIO_NET_F_HOST_TSO4 = 1 << 11
VIRTIO_NET_F_HOST_TSO6 = 1 << 12
VIRTIO_NET_F_HOST_ECN = 1 << 13
VIRTIO_NET_F_HOST_UFO = 1 << 14
VIRTIO_NET_F_MRG_RXBUF = 1 << 15
VIRTIO_NET_F_STATUS = 1 << 16

GUEST_GSO = VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6 | VIRTIO_NET_F_GUEST_UFO
HOST_GSO = VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6 | VIRTIO_NET_F_HOST_UFO
#: what ``NetBackend.offloads`` may grant
OFFLOAD_FEATURES = (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM | GUEST_GSO | VIRTIO_NET_F_GUEST_ECN
                    | HOST_GSO | VIRTIO_NET_F_HOST_ECN)

#: what a device on vhost offers whatever vhost says: served here (the
#: configuration space) or carried by the tap's header, which vhost passes on
VHOST_DEVICE_SIDE = VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MTU | OFFLOAD_FEATURES

#: §5.1.3.1: each feature needs at least one of these
FEATURE_NEEDS = {
    VIRTIO_NET_F_GUEST_TSO4: VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO6: VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_UFO: VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN: VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4: VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_HOST_TSO6: VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_HOST_UFO: VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_HOST_ECN: VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6,
}

# §5.1.6: struct virtio_net_hdr_v1 (flags, gso_type, hdr_len, gso_size,
# csum_start, csum_offset, num_buffers), little-endian
VNET_HDR = struct.Struct("<BBHHHHH")
VNET_HDR_LEN = VNET_HDR.size
NUM_BUFFERS = struct.Struct("<H")
NUM_BUFFERS_OFFSET = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80

# §5.1.4: struct virtio_net_config up to mtu: mac[6], status, max_virtqueue_pairs, mtu
CONFIG = struct.Struct("<6sHHH")
VIRTIO_NET_S_LINK_UP = 1

ETH_HLEN = 14
VLAN_HLEN = 4
DEFAULT_MTU = 1500                              # what a driver assumes without VIRTIO_NET_F_MTU
MIN_MTU = 68                                    # RFC 791: the least an IPv4 link carries
#: a GSO frame: an IP packet of at most 64 KiB - 1 in an Ethernet frame, VLAN-tagged or not
MAX_GSO_FRAME = 65535 + ETH_HLEN + VLAN_HLEN
RX_BUFFER_LEN = VNET_HDR_LEN + MAX_GSO_FRAME

RX_BUDGET = 64          # frames moved per backend wake-up before the loop serves others
TX_BUDGET = 256         # chains sent per turn before the loop serves others

STAT_NAMES = ("rx_packets", "rx_bytes", "rx_dropped", "rx_errors", "rx_no_buffer",
              "tx_packets", "tx_bytes", "tx_dropped", "tx_errors")

_TX_GSO = {VIRTIO_NET_HDR_GSO_TCPV4: VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_HDR_GSO_TCPV6: VIRTIO_NET_F_HOST_TSO6,
           VIRTIO_NET_HDR_GSO_UDP: VIRTIO_NET_F_HOST_UFO}
_RX_GSO = {VIRTIO_NET_HDR_GSO_TCPV4: VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_HDR_GSO_TCPV6: VIRTIO_NET_F_GUEST_TSO6,
           VIRTIO_NET_HDR_GSO_UDP: VIRTIO_NET_F_GUEST_UFO}


class NetBackend(Protocol):
    """The host end of a virtio-net device (a tap, passt...).

    The device calls it from its event loop thread, with its lock held, so
    never twice at once; ``set_offloads`` comes at activation, from the
    thread that activated the device."""

    #: True: every frame sent and received starts with the 12-byte
    #: virtio_net_hdr_v1 (a tap with IFF_VNET_HDR and TUNSETVNETHDRSZ 12);
    #: False: bare Ethernet frames (passt)
    vnet_hdr: bool
    #: an MTU to offer the guest (VIRTIO_NET_F_MTU), or None
    mtu: int | None

    def fileno(self) -> int:
        """Readable when ``recv_into`` may return a frame; writable when a
        kept tail may be flushed."""

    def recv_into(self, buf: memoryview) -> int:
        """One whole frame (header first when ``vnet_hdr``) into ``buf``;
        returns its length.  Raises BlockingIOError when none waits,
        ConnectionError when the backend is gone."""

    def send(self, parts: Sequence[memoryview | bytes]) -> bool:
        """One whole frame (header first when ``vnet_hdr``) gathered from
        ``parts``.  True when taken: the backend copies any tail it could
        not send yet (the views are released when ``send`` returns).
        False when it cannot take a frame now (nothing consumed): wait for
        the fd to be writable and call ``flush``.  ConnectionError when
        gone."""

    def flush(self) -> bool:
        """Push a kept tail; True when nothing is left."""

    def offloads(self) -> int:
        """The virtio-net feature bits among ``OFFLOAD_FEATURES`` this
        backend can carry (0 for one without ``vnet_hdr``)."""

    def set_offloads(self, negotiated: int) -> None:
        """The driver's accepted features, so a tap can TUNSETOFFLOAD
        exactly the guest-side offloads the guest takes."""

    def close(self) -> None:
        """Release the backend (its owner calls this, never the device)."""


# --- features (§5.1.3) --------------------------------------------------

def unmet_dependencies(features: int) -> int:
    """The bits of ``features`` whose §5.1.3.1 requirement is missing."""
    unmet = 0
    for bit, needs in FEATURE_NEEDS.items():
        if features & bit and not features & needs:
            unmet |= bit
    return unmet


def consistent_offloads(features: int) -> int:
    """``features`` less every bit whose requirement is missing, until none
    is (ECN needs TSO, which needs CSUM)."""
    while unmet := unmet_dependencies(features):
        features &= ~unmet
    return features


def feature_names(features: int) -> str:
    """``features`` as VIRTIO_NET_F_* names, for log lines."""
    names = [name for name, value in globals().items()
             if name.startswith("VIRTIO_NET_F_") and features & value]
    return "|".join(names) or "0"


# --- header checks (§5.1.6.2, §5.1.6.4) --------------------------------

def tx_header_problem(header: bytes, frame_len: int, features: int) -> str | None:
    """What is wrong with a transmit header for a frame of ``frame_len``
    bytes under the negotiated ``features`` (§5.1.6.2.1), or None."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, _ = VNET_HDR.unpack(header)
    if flags & ~VIRTIO_NET_HDR_F_NEEDS_CSUM:
        return f"header flags {flags:#x}: a driver sets only NEEDS_CSUM"
    if flags and not features & VIRTIO_NET_F_CSUM:
        return "NEEDS_CSUM but VIRTIO_NET_F_CSUM was not negotiated"
    if flags and csum_start + csum_offset + 2 > frame_len:
        return f"checksum at {csum_start}+{csum_offset} lies past a frame of {frame_len} bytes"
    if hdr_len > frame_len:
        return f"hdr_len {hdr_len} is past a frame of {frame_len} bytes"
    return gso_problem(gso_type, gso_size, features, _TX_GSO, VIRTIO_NET_F_HOST_ECN,
                       need_csum=not flags)


def gso_problem(gso_type: int, gso_size: int, features: int, kinds: dict[int, int], ecn: int,
                need_csum: bool = False) -> str | None:
    """What is wrong with ``gso_type``/``gso_size`` when ``kinds`` maps each
    GSO type to the feature it needs and ``ecn`` is the ECN feature; with
    ``need_csum``, GSO without NEEDS_CSUM is wrong too (§5.1.6.2.1)."""
    kind = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if kind == VIRTIO_NET_HDR_GSO_NONE:
        return "GSO_ECN without a GSO type" if gso_type else None
    if kind not in kinds:
        return f"unknown gso_type {gso_type:#x}"
    if not features & kinds[kind]:
        return f"gso_type {gso_type:#x} was not negotiated"
    if gso_type & VIRTIO_NET_HDR_GSO_ECN and not features & ecn:
        return "GSO_ECN was not negotiated"
    if gso_size == 0:
        return "GSO with gso_size 0"
    if need_csum:
        return "GSO without NEEDS_CSUM"
    return None


# --- the used ring, several at once -----------------------------------------

def add_used_together(queue: Queue, memory: GuestMemory, elements: list[tuple[int, int]]) -> None:
    """Return several chains with one used idx store (§2.7.8, §2.7.13).

    A merged frame's buffers must reach the driver together: Linux reads
    ``num_buffers`` from the first and drops the frame when the others are
    not in the used ring yet.  The elements are stored first, then the
    index, as :meth:`Queue.add_used` does for one (TSO keeps the stores in
    order).  Heads and lengths come from chains this device popped."""
    if len(elements) == 1:
        queue.add_used(memory, *elements[0])
        return
    count, size = len(elements), queue.size
    start = queue.next_used % size
    packed = struct.pack(f"<{2 * count}I", *itertools.chain.from_iterable(elements))
    first = min(count, size - start)        # the rest wraps to the ring's start
    try:
        memory.write(queue.used_ring + 4 + USED_ELEM_SIZE * start, packed[:USED_ELEM_SIZE * first])
        if first < count:
            memory.write(queue.used_ring + 4, packed[USED_ELEM_SIZE * first:])
        queue.next_used = (queue.next_used + count) & 0xFFFF
        memory.write_u16(queue.used_ring + 2, queue.next_used)
    except GuestMemoryError as exc:
        raise RingAddressError(str(exc)) from None


def parse_mac(text: str) -> bytes:
    """``"52:54:00:12:34:56"`` as six bytes; ValueError otherwise."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"MAC address {text!r} is not six colon-separated hex bytes")
    return bytes(int(p, 16) for p in parts)


# --- the device -----------------------------------------------------------

@dataclass
class _TxFrame:
    """A transmit chain that passed its checks: the header as checked (a
    copy, so the driver cannot change it afterwards) and the frame's buffers."""

    chain: DescriptorChain
    header: bytes
    body: Segments
    length: int


@dataclass
class _Activation:
    memory: GuestMemory
    features: int
    interrupt: VirtioInterrupt
    rx: Queue | None
    tx: Queue | None
    rx_max: int                 # longest frame the driver takes (header excluded)
    tx_max: int                 # longest frame the driver may send
    stopped: bool = False
    rx_chains: list[DescriptorChain] = field(default_factory=list)    # popped, not used yet (MRG_RXBUF)
    rx_room: int = 0            # their writable bytes
    tx_held: _TxFrame | None = None     # the frame the backend refused; sent once it has room


@dataclass
class _Signals:
    """What to tell the driver once ``_lock`` is released."""

    used: dict[int, int] = field(default_factory=lambda: {RECEIVEQ: 0, TRANSMITQ: 0})
    notify: set[int] = field(default_factory=set)
    config: bool = False
    error: str | None = None


class VirtioNet(VirtioDevice):
    """A virtio-net device on ``backend``, served on ``loop``; with
    ``vhost`` (a tap backend) the kernel moves its frames.

    ``close`` stops watching the backend but closes neither it, vhost nor
    the loop: they belong to whoever made them.  Raises ValueError when
    vhost lacks VIRTIO_F_VERSION_1 or the backend has no header."""

    device_type = VIRTIO_ID_NET

    def __init__(self, backend: NetBackend, mac: bytes, loop: EventLoop, queue_size: int = 256,
                 vhost: VhostNetKernel | None = None) -> None:
        super().__init__()
        if len(mac) != 6:
            raise ValueError(f"a MAC address is 6 bytes, not {len(mac)}")
        if backend.mtu is not None and not MIN_MTU <= backend.mtu <= 65535:
            raise ValueError(f"MTU {backend.mtu} is outside {MIN_MTU}..65535")
        if vhost is not None and not backend.vnet_hdr:
            raise ValueError("vhost-net needs a backend that carries the virtio-net header (a tap)")
        self.backend = backend
        self.mac = bytes(mac)
        # After a restore under another MAC (a clone): the one the saved
        # device had served, which the guest's driver read and still uses.
        self.restored_mac: bytes | None = None
        self.loop = loop            # serves the backend's fd and, through the transport, the doorbells
        self.queue_max_sizes = (queue_size, queue_size)
        self._fd = backend.fileno()
        self._vhost = VhostDataPath(vhost, loop) if vhost is not None else None
        self._features = self._offer()
        self._lock = threading.Lock()
        self._active: _Activation | None = None
        self._link_up = True
        self._gone = False
        self._closed = False
        self._reading = self._writing = self._rx_paused = False
        self._rx_buf = bytearray(RX_BUFFER_LEN)
        self._rx_view = memoryview(self._rx_buf)
        self._recv_view = self._rx_view if backend.vnet_hdr else self._rx_view[VNET_HDR_LEN:]
        self._held: int | None = None   # bytes (header included) of the frame waiting in _rx_buf
        self._errors = RateLimitedLog(log)
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        with self._lock:
            self._set_reading(True)

    # --- host side ---

    def set_link(self, up: bool) -> None:
        """Link up or down (VIRTIO_NET_S_LINK_UP, §5.1.4); the driver is
        told with a configuration change.  While down, frames are dropped
        both ways.  Any thread."""
        with self._lock:
            before = self._status()
            self._link_up = up
            changed = self._status() != before
            self._unpause_rx_if_idle()
            active = self._active
        if changed and active is not None:
            active.interrupt.signal_config_change()

    @property
    def link_up(self) -> bool:
        """What the driver reads in ``status``: up, and the backend not gone."""
        return bool(self._status())

    def close(self) -> None:
        """VM shutdown: reset and stop watching the backend's fd.  The
        backend and the loop are not closed: their owner closes them."""
        with self._lock:
            self._closed = True
        self.reset()
        if self._vhost is not None:
            with self._lock:
                self._vhost.close()

    # --- VirtioDevice ---

    def device_features(self) -> int:
        return self._features

    def _offer(self) -> int:
        """§5.1.3: the feature bits offered, fixed at construction."""
        features = (VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX
                    | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MRG_RXBUF)
        if self.backend.mtu is not None:
            features |= VIRTIO_NET_F_MTU
        if self.backend.vnet_hdr:   # offloads need a header to travel in
            features |= consistent_offloads(self.backend.offloads() & OFFLOAD_FEATURES)
        if self._vhost is not None:
            features &= self._vhost.features | VHOST_DEVICE_SIDE
            if not features & VIRTIO_F_VERSION_1:
                raise ValueError("vhost-net does not offer VIRTIO_F_VERSION_1 (a kernel older than 4.0?)")
        return features

    def read_config(self, offset: int, data: memoryview) -> None:
        """§5.1.4; ``mtu`` is 0 when VIRTIO_NET_F_MTU is not offered."""
        config = CONFIG.pack(self.mac, self._status(), 1, self.backend.mtu or 0)
        chunk = config[offset:offset + len(data)] if offset >= 0 else b""
        data[:len(chunk)] = chunk
        data[len(chunk):] = bytes(len(data) - len(chunk))

    def activate(self, memory: GuestMemory, queues: list[Queue], driver_features: int,
                 interrupt: VirtioInterrupt) -> None:
        self.reset()
        unmet = unmet_dependencies(driver_features)
        if unmet:
            self._refuse(f"driver accepted {feature_names(unmet)} without the features they need "
                         "(virtio 1.2 §5.1.3.1)")
            return
        rx, tx = (queue if queue.ready else None for queue in queues[:2])
        try:
            for queue in (rx, tx):
                if queue is not None:
                    queue.configure(memory, driver_features)
        except QueueError as exc:
            self._refuse(str(exc))
            return
        active = _Activation(memory, driver_features, interrupt, rx, tx,
                             self._max_frame(driver_features, GUEST_GSO),
                             self._max_frame(driver_features, HOST_GSO))
        with self._lock:
            self._set_offloads(driver_features)
            problem = self._start_vhost(active) if self._vhost is not None else None
            if problem is None:
                self._active = active
        if problem is not None:
            self._refuse(problem)

    def _start_vhost(self, active: _Activation) -> str | None:
        """Hand the queues to vhost (``_lock`` held); what failed, or None."""
        try:
            self._vhost.start(active.memory, [active.rx, active.tx], active.features, active.interrupt,
                              self.queue_kicks, self._fd)
        except OSError as exc:
            return f"vhost-net refused the queues: {exc}"
        return None

    def interrupts_changed(self) -> None:
        """The transport's vectors changed: vhost's call fds follow."""
        with self._lock:
            if self._vhost is not None and self._active is not None:
                self._vhost.interrupts_changed()

    def queue_notify(self, queue_index: int) -> None:
        """Served on the loop thread; handed to it from any other."""
        active = self._active
        if active is None or queue_index not in (RECEIVEQ, TRANSMITQ):
            return
        if self._vhost is not None:
            self._vhost.kick(queue_index)
            return
        if self.loop.on_loop_thread():
            self._notified(active, queue_index)
        else:
            self.loop.call_soon(functools.partial(self._notified, active, queue_index))

    def reset(self) -> None:
        """Forget the driver: drop the frame held for the receiveq, the
        chains popped and not returned, and any wait for the backend.  Until
        the next activation frames from the backend are read and dropped."""
        with self._lock:
            active, self._active = self._active, None
            if self._vhost is not None:
                self._vhost.stop()
            if active is not None:
                self._stop(active)
            self._set_writing(False)
            self._drop_held("rx_dropped")
            self._rx_paused = False
            self._set_reading(not self._gone and not self._closed)

    # --- snapshots (kvmlite.base.state; see the module doc) ---

    def save_device_state(self) -> dict:
        """What the guest observes and the VMM keeps: the MAC in the
        configuration space, the link as set (``set_link``) and the status
        the driver last read, the MTU offered, the counters, and the
        chains popped but not returned (MRG_RXBUF receive chains gathered
        for a frame, the transmit chain waiting for room in the backend),
        by head.  The frame held for the receiveq is not saved: the
        restored VM does not get it (a frame in flight, lost as on a real
        NIC); this device keeps it.  On vhost the kernel's ring positions
        are read back first (:meth:`VhostDataPath.ring_bases`), so the
        transport saves where vhost stands.  Called by the transport with
        the vCPUs parked, under its lock."""
        with self._lock:
            active = self._active
            live = active is not None and not active.stopped
            if live and self._vhost is not None and self._vhost.running:
                self._read_vhost_positions(active)
            return {"mac": pack_bytes(self.mac), "link_up": self._link_up, "status": self._status(),
                    "mtu": self.backend.mtu or 0, "stats": dict(self._stats),
                    "rx_chains": [chain.head for chain in active.rx_chains] if live else [],
                    "tx_held": active.tx_held.chain.head if live and active.tx_held is not None else -1}

    def _read_vhost_positions(self, active: _Activation) -> None:
        """Copy vhost's ring positions into the queues (``_lock`` held):
        next available from GET_VRING_BASE, used from the used ring's idx,
        which vhost writes and the driver only reads."""
        try:
            bases = self._vhost.ring_bases(self._fd)
        except OSError as exc:
            raise StateError(f"virtio-net: vhost-net did not give back its ring positions: {exc}") from None
        for index, queue in ((RECEIVEQ, active.rx), (TRANSMITQ, active.tx)):
            if queue is None or index not in bases:
                continue
            try:
                used = active.memory.read_u16(queue.used_ring + 2)
            except GuestMemoryError as exc:
                raise StateError(f"virtio-net: queue {index} used ring: {exc}") from None
            queue.next_avail, queue.next_used = bases[index], used
            queue.set_signalled_used(None)      # vhost decides its interrupts; ours never ran

    def restore_device_state(self, state: dict) -> None:
        """Load :meth:`save_device_state`'s dict on a fresh device (a new
        backend from the VM's configuration), after the transport has
        activated it, which applied the negotiated offloads to the new
        backend (``set_offloads``: a tap's TUNSETOFFLOAD) and, on vhost,
        started the rings at the saved positions.  This device keeps the
        MAC it was built with (a VM restored under another name, a clone,
        has its own); a saved one that differs is kept as ``restored_mac``,
        the address the guest's driver read and goes on using until the
        guest is told (the agent's ``restored``).  The link is as saved,
        and up for the driver when the new backend is.  The saved chains
        are walked again from guest memory: the receive chains wait for the
        next frame, the transmit frame goes to the new backend.  Everything is checked
        before anything is set (StateError)."""
        r = Reader(state, "virtio-net")
        mac = r.bytes("mac", 6)
        link_up = r.bool("link_up")
        status = r.int("status", 0, VIRTIO_NET_S_LINK_UP)
        mtu = r.int("mtu", 0, 65535)
        saved_stats = r.sub("stats")
        stats = {name: saved_stats.int(name) for name in STAT_NAMES}
        rx_heads = r.ints("rx_chains", None, 0, 0xFFFF)
        tx_head = r.int("tx_held", -1, 0xFFFF)
        with self._lock:
            active = self._active
            live = active is not None and not active.stopped
            if live and active.features & VIRTIO_NET_F_MTU and mtu != (self.backend.mtu or 0):
                raise StateError(f"virtio-net: the driver was given MTU {mtu}, this backend has "
                                 f"{self.backend.mtu or 'none'}")
            chains, frame = self._restored_chains(active if live else None, rx_heads, tx_head)
            self.restored_mac = mac if mac != self.mac else None
            self._link_up = link_up
            self._stats.update(stats)
            if live and self._vhost is not None:
                for index in (RECEIVEQ, TRANSMITQ):     # a spurious kick is harmless, a lost one is not
                    self._vhost.kick(index)
            elif live:
                active.rx_chains = chains
                active.rx_room = sum(chain.writable_len for chain in chains)
                if frame is not None:       # sent once the new backend's fd says it has room
                    active.tx_held = frame
                    self._set_writing(True)
                # a transmit turn the saved device had scheduled (TX_BUDGET) is not in the state
                self.loop.call_soon(functools.partial(self._notified, active, TRANSMITQ))
            changed = live and self._status() != status
        if changed:     # the backend went away before the save, this one is up (§5.1.4)
            self.loop.call_soon(active.interrupt.signal_config_change)

    def _restored_chains(self, active: _Activation | None, rx_heads: list[int],
                         tx_head: int) -> tuple[list[DescriptorChain], _TxFrame | None]:
        """The saved chains walked again (``_lock`` held), checked as when
        they were popped; StateError for any that is not."""
        if active is None:
            if rx_heads or tx_head >= 0:
                raise StateError("virtio-net: saved chains in flight, but the driver had not started the device")
            return [], None
        if rx_heads and (active.rx is None or not active.features & VIRTIO_NET_F_MRG_RXBUF):
            raise StateError("virtio-net: saved receive chains without a receiveq on mergeable buffers")
        if tx_head >= 0 and active.tx is None:
            raise StateError("virtio-net: a saved transmit chain without a transmitq")
        chains = [self._chain_at(active, active.rx, head, "receive") for head in rx_heads]
        for chain in chains:
            if chain.nread or chain.writable_len < VNET_HDR_LEN:
                raise StateError(f"virtio-net: saved receive chain {chain.head} is not a receive buffer")
        frame = None
        if tx_head >= 0:
            chain = self._chain_at(active, active.tx, tx_head, "transmit")
            frame, problem = self._parse_tx(active, chain)
            if frame is None:
                raise StateError(f"virtio-net: saved transmit chain {tx_head}: {problem}")
        return chains, frame

    @staticmethod
    def _chain_at(active: _Activation, queue: Queue, head: int, what: str) -> DescriptorChain:
        """Chain ``head`` of ``queue`` walked as ``Queue.pop`` walks it."""
        if head >= queue.size:
            raise StateError(f"virtio-net: saved {what} chain {head} is outside a queue of {queue.size}")
        try:
            return queue._walk_chain(active.memory, head)
        except QueueError as exc:
            raise StateError(f"virtio-net: saved {what} chain {head}: {exc}") from None

    def stats(self) -> dict[str, int]:
        """The counters of the module doc; with vhost only ``{"vhost": 1}``:
        the kernel moves the frames and counts nothing for us."""
        if self._vhost is not None:
            return {"vhost": 1}
        with self._lock:
            return dict(self._stats)

    # --- common ---

    def _status(self) -> int:
        return VIRTIO_NET_S_LINK_UP if self._link_up and not self._gone else 0

    def _max_frame(self, features: int, gso: int) -> int:
        """The longest frame (header excluded) with the negotiated ``features``;
        ``gso`` is the direction's segmentation offloads."""
        if features & gso:
            return MAX_GSO_FRAME
        return (self.backend.mtu or DEFAULT_MTU) + ETH_HLEN + VLAN_HLEN

    def _set_offloads(self, features: int) -> None:
        try:
            self.backend.set_offloads(features)
        except OSError as exc:  # the guest still works: the backend just does less for it
            self._errors.warning(f"virtio-net: backend refused offloads {feature_names(features)}: {exc}")

    def _refuse(self, reason: str) -> None:
        self._errors.warning(f"virtio-net: {reason}; device needs reset")
        self.on_needs_reset(reason)

    def _count(self, key: str, amount: int = 1) -> None:
        self._stats[key] += amount

    def _receiving(self, active: _Activation | None) -> bool:
        return (active is not None and not active.stopped and active.rx is not None
                and self._link_up and not self._gone)

    def _sending(self) -> bool:
        return self._link_up and not self._gone

    def _set_reading(self, on: bool) -> None:
        """Watch the backend's fd for frames, or stop (``_lock`` held);
        never with vhost, which reads the backend itself."""
        on = on and self._vhost is None
        if on != self._reading:
            if on:
                self.loop.add_reader(self._fd, self._on_readable)
            else:
                self.loop.remove_reader(self._fd)
            self._reading = on

    def _set_writing(self, on: bool) -> None:
        """Watch the backend's fd for room, or stop (``_lock`` held)."""
        if on != self._writing:
            if on:
                self.loop.add_writer(self._fd, self._on_writable)
            else:
                self.loop.remove_writer(self._fd)
            self._writing = on

    def _stop(self, active: _Activation) -> None:
        """The activation ends: release what it popped (``_lock`` held)."""
        active.stopped = True
        for chain in active.rx_chains:
            chain.release()
        active.rx_chains, active.rx_room, active.tx_held = [], 0, None
        self._unpause_rx_if_idle()

    def _serve(self, active: _Activation | None, work: Callable[[_Activation | None, _Signals], None]) -> None:
        """Run ``work`` under ``_lock`` unless ``active`` is no longer the
        current activation (a reset came first), then interrupt and report
        with the lock released (loop thread)."""
        signals = _Signals()
        with self._lock:
            if active is self._active:
                try:
                    work(active, signals)
                    if active is not None and not active.stopped:
                        self._check_notify(active, signals)
                except QueueError as exc:
                    signals.error = str(exc)
                    signals.notify = {q for q, n in signals.used.items() if n}
                    self._stop(active)
        self._tell(active, signals)

    def _check_notify(self, active: _Activation, signals: _Signals) -> None:
        """§2.7.7: which queues' used buffers the driver wants an interrupt for."""
        for index, queue in ((RECEIVEQ, active.rx), (TRANSMITQ, active.tx)):
            if signals.used[index] and queue is not None and queue.needs_notification(active.memory):
                signals.notify.add(index)

    def _tell(self, active: _Activation | None, signals: _Signals) -> None:
        if active is not None:
            for index in sorted(signals.notify):
                active.interrupt.signal_used_queue(index)
            if signals.config:
                active.interrupt.signal_config_change()
        if signals.error is not None:
            self._refuse(signals.error)

    def _notified(self, active: _Activation, queue_index: int) -> None:
        self._serve(active, self._resume_rx if queue_index == RECEIVEQ else self._transmit)

    def _lose_backend(self, active: _Activation | None, signals: _Signals, exc: BaseException) -> None:
        """The backend is gone: link down, stop watching it, drop what it
        would have carried (``_lock`` held)."""
        if self._gone:
            return
        self._gone = True
        self._set_reading(False)
        self._set_writing(False)
        self._drop_held("rx_dropped")
        self._rx_paused = False
        signals.config = self._link_up
        log.warning("virtio-net: backend gone (%s): link down; frames are dropped from now on", exc)
        if active is not None and active.tx_held is not None:   # no room will come: drop it
            self.loop.call_soon(functools.partial(self._notified, active, TRANSMITQ))

    # --- receiveq: host to guest (§5.1.6.3, §5.1.6.4) ---

    def _on_readable(self) -> None:
        """The backend's fd is readable (loop thread)."""
        self._serve(self._active, self._receive)

    def _receive(self, active: _Activation | None, signals: _Signals) -> None:
        """Move frames to the receiveq until the backend has none, the ring
        has no room (then wait for the driver), or RX_BUDGET frames moved."""
        for _ in range(RX_BUDGET):
            if self._held is None and not self._read_frame(active, signals):
                return
            if not self._receiving(active):
                self._drop_held("rx_dropped")
                continue
            if not self._place_held(active, signals):
                self._pause_rx()
                return

    def _read_frame(self, active: _Activation | None, signals: _Signals) -> bool:
        """One frame from the backend into ``_rx_buf``, a zero header first
        when the backend carries none; False when none waits."""
        try:
            n = self.backend.recv_into(self._recv_view)
        except BlockingIOError:
            return False
        except OSError as exc:      # ConnectionError, or a failure that would recur on every read
            self._lose_backend(active, signals, exc)
            return False
        if not self.backend.vnet_hdr:
            self._rx_view[:VNET_HDR_LEN] = bytes(VNET_HDR_LEN)
            n += VNET_HDR_LEN
        self._held = n
        return True

    def _drop_held(self, counter: str) -> None:
        if self._held is not None:
            self._held = None
            self._count(counter)

    def _pause_rx(self) -> None:
        """No room in the receiveq: keep the frame, stop reading until the
        driver posts buffers (its notification calls ``_resume_rx``)."""
        self._count("rx_no_buffer")
        self._rx_paused = True
        self._set_reading(False)

    def _resume_rx(self, active: _Activation | None, signals: _Signals) -> None:
        if self._rx_paused:
            self._rx_paused = False
            self._set_reading(not self._gone and not self._closed)
            self._receive(active, signals)

    def _unpause_rx_if_idle(self) -> None:
        """A paused receive whose frame can no longer be delivered (link
        down, activation stopped): drop it and go back to reading."""
        if self._rx_paused and not self._receiving(self._active):
            self._drop_held("rx_dropped")
            self._rx_paused = False
            self._set_reading(not self._gone and not self._closed)

    def _place_held(self, active: _Activation, signals: _Signals) -> bool:
        """Put the held frame into the receiveq; False when it has no room yet."""
        problem = self._rx_problem(active)
        if problem is not None:
            self._count("rx_errors")
            self._errors.warning(f"virtio-net: received frame dropped: {problem}")
            self._held = None
            return True
        if active.features & VIRTIO_NET_F_MRG_RXBUF:
            return self._place_merged(active, signals)
        return self._place_single(active, signals)

    def _rx_problem(self, active: _Activation) -> str | None:
        """Check the held frame against what the driver negotiated; clear
        the header flags it did not (§5.1.6.4.1)."""
        length = self._held - VNET_HDR_LEN
        if length < ETH_HLEN:
            return f"{self._held} bytes is shorter than a header and an Ethernet header"
        if length > active.rx_max:
            return f"a frame of {length} bytes is longer than the {active.rx_max} negotiated"
        flags, gso_type, _, gso_size, _, _, _ = VNET_HDR.unpack_from(self._rx_buf)
        csum = active.features & VIRTIO_NET_F_GUEST_CSUM
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and not csum:
            return "partial checksum but VIRTIO_NET_F_GUEST_CSUM was not negotiated"
        self._rx_buf[0] = flags & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID) if csum else 0
        return gso_problem(gso_type, gso_size, active.features, _RX_GSO, VIRTIO_NET_F_GUEST_ECN)

    def _pop_rx(self, active: _Activation, signals: _Signals) -> DescriptorChain | None:
        """The next receive chain fit to take a frame, or None when the ring
        is empty (notifications re-enabled).  A chain with readable
        descriptors or too short for a header goes back unused (§5.1.6.3.1)."""
        return pop_writable(active.rx, active.memory, VNET_HDR_LEN, functools.partial(self._unfit_rx, signals))

    def _gather_rx(self, active: _Activation, signals: _Signals) -> bool:
        """With MRG_RXBUF: move every receive chain the driver has made
        available into ``rx_chains`` at once (unfit ones go back unused, as
        in :meth:`_pop_rx`); False when there was none fit.  A frame usually
        takes several, and what it leaves serves the next."""
        chains = pop_writable_many(active.rx, active.memory, VNET_HDR_LEN, functools.partial(self._unfit_rx, signals),
                                   active.rx.size - len(active.rx_chains))
        active.rx_chains.extend(chains)
        active.rx_room += sum(chain.writable_len for chain in chains)
        return bool(chains)

    def _unfit_rx(self, signals: _Signals, chain: DescriptorChain) -> None:
        """Count and log a receive chain returned unused; the caller returns it."""
        signals.used[RECEIVEQ] += 1
        self._count("rx_errors")
        self._errors.warning(f"virtio-net: receive chain {chain.head} refused: "
                             f"{chain.readable_len} readable, {chain.writable_len} writable bytes")

    def _place_single(self, active: _Activation, signals: _Signals) -> bool:
        """Without MRG_RXBUF: the frame in one chain, or dropped if it does not fit."""
        total = self._held
        chain = self._pop_rx(active, signals)
        if chain is None:
            return False
        written = 0
        if chain.writable_len < total:
            self._drop_held("rx_dropped")
        else:
            NUM_BUFFERS.pack_into(self._rx_buf, NUM_BUFFERS_OFFSET, 1)
            written = chain.writable_segments().scatter(active.memory, self._rx_view[:total])
            self._delivered(total)
        chain.release()
        active.rx.add_used(active.memory, chain.head, written)
        signals.used[RECEIVEQ] += 1
        return True

    def _place_merged(self, active: _Activation, signals: _Signals) -> bool:
        """With MRG_RXBUF: gather chains until the frame fits, then fill them."""
        total = self._held
        while active.rx_room < total:
            if len(active.rx_chains) >= active.rx.size:
                # Every buffer the ring can hold is here and the frame still
                # does not fit: drop it; the chains wait for the next one.
                self._drop_held("rx_dropped")
                return True
            if not self._gather_rx(active, signals):
                return False
        self._fill_merged(active, total, signals)
        return True

    def _fill_merged(self, active: _Activation, total: int, signals: _Signals) -> None:
        """Fill the first gathered chains with the frame, ``num_buffers``
        set to how many it took, and publish them together."""
        taken: list[tuple[DescriptorChain, int]] = []
        offset = 0
        for chain in active.rx_chains:
            if offset >= total:
                break
            n = min(chain.writable_len, total - offset)
            taken.append((chain, n))
            offset += n
        NUM_BUFFERS.pack_into(self._rx_buf, NUM_BUFFERS_OFFSET, len(taken))
        offset, memory, frame = 0, active.memory, self._rx_view
        for chain, n in taken:
            if chain.count == 1:        # one buffer (Linux's): no segment list to cut
                memory.write(chain.buffer(0)[0], frame[offset:offset + n])
            else:
                chain.writable_segments().scatter(memory, frame[offset:offset + n])
            chain.release()
            offset += n
        del active.rx_chains[:len(taken)]
        active.rx_room -= sum(chain.writable_len for chain, _ in taken)
        add_used_together(active.rx, active.memory, [(chain.head, n) for chain, n in taken])
        signals.used[RECEIVEQ] += len(taken)
        self._delivered(total)

    def _delivered(self, total: int) -> None:
        self._held = None
        self._count("rx_packets")
        self._count("rx_bytes", total - VNET_HDR_LEN)

    # --- transmitq: guest to host (§5.1.6.2) ---

    def _transmit(self, active: _Activation | None, signals: _Signals) -> None:
        """Send available frames until the ring is empty, the backend is
        full (then wait for room), or TX_BUDGET chains were served (then
        come back after the loop's other work)."""
        if active is None or active.stopped or active.tx is None or not self._release_held_tx(active, signals):
            return
        queue, memory = active.tx, active.memory
        for _ in range(TX_BUDGET):
            chain = queue.pop(memory)
            if chain is None:
                if queue.enable_notification(memory):
                    continue
                return
            if not self._transmit_chain(active, chain, signals):
                return
        self.loop.call_soon(functools.partial(self._notified, active, TRANSMITQ))

    def _release_held_tx(self, active: _Activation, signals: _Signals) -> bool:
        """False while a frame waits for the backend to have room; a frame
        held when the backend went away is dropped."""
        frame = active.tx_held
        if frame is None:
            return True
        if not self._gone:
            return False
        active.tx_held = None
        self._count("tx_dropped")
        self._complete_tx(active, frame.chain, signals)
        return True

    def _transmit_chain(self, active: _Activation, chain: DescriptorChain, signals: _Signals) -> bool:
        """Check and send one chain; False when the backend had no room
        (the frame is held and the fd watched for writability)."""
        frame = self._tx_frame(active, chain)
        if frame is not None:
            if not self._sending():
                self._count("tx_dropped")
            elif self._send(active, frame, signals) is False:
                active.tx_held = frame
                self._set_writing(True)
                return False
        self._complete_tx(active, chain, signals)
        return True

    def _complete_tx(self, active: _Activation, chain: DescriptorChain, signals: _Signals) -> None:
        chain.release()
        active.tx.add_used(active.memory, chain.head, 0)    # the device writes nothing into a tx chain
        signals.used[TRANSMITQ] += 1

    def _tx_frame(self, active: _Activation, chain: DescriptorChain) -> _TxFrame | None:
        """The chain's header (checked) and frame, or None when malformed
        (counted and logged)."""
        frame, problem = self._parse_tx(active, chain)
        if frame is not None:
            return frame
        self._count("tx_errors")
        self._errors.warning(f"virtio-net: transmit chain {chain.head} dropped: {problem}")
        return None

    def _parse_tx(self, active: _Activation, chain: DescriptorChain) -> tuple[_TxFrame | None, str | None]:
        """(the chain's checked header and frame, None), or (None, what is wrong)."""
        problem = self._tx_chain_problem(active, chain)
        if problem is not None:
            return None, problem
        head, body = chain.readable_segments().split_at(VNET_HDR_LEN)
        header = head.gather(active.memory)
        length = chain.readable_len - VNET_HDR_LEN
        problem = tx_header_problem(header, length, active.features)
        if problem is not None:
            return None, problem
        return _TxFrame(chain, header, body, length), None

    @staticmethod
    def _tx_chain_problem(active: _Activation, chain: DescriptorChain) -> str | None:
        """§5.1.6.2: a header then a frame, all device-readable."""
        if chain.nread != chain.count:
            return "a device-writable descriptor"
        if chain.readable_len < VNET_HDR_LEN + ETH_HLEN:
            return f"{chain.readable_len} bytes: no room for a header and an Ethernet header"
        if chain.readable_len - VNET_HDR_LEN > active.tx_max:
            return f"a frame of {chain.readable_len - VNET_HDR_LEN} bytes is longer than {active.tx_max}"
        return None

    def _send(self, active: _Activation, frame: _TxFrame, signals: _Signals) -> bool | None:
        """Hand ``frame`` to the backend: True taken, False no room, None
        failed (counted).  The backend sees views of guest memory, released
        when it returns."""
        view = active.memory.view
        views = [view(a, n) for a, n in zip(frame.body.addrs, frame.body.lens) if n]
        parts: list[memoryview | bytes] = [frame.header] if self.backend.vnet_hdr else []
        try:
            taken = self.backend.send(parts + views)
        except ConnectionError as exc:
            self._lose_backend(active, signals, exc)
            self._count("tx_dropped")
            return None
        except OSError as exc:      # this frame refused (a tap's EINVAL): the next may go
            self._count("tx_errors")
            self._errors.warning(f"virtio-net: backend refused a frame: {exc}")
            return None
        finally:
            for v in views:
                v.release()
        if taken:
            self._count("tx_packets")
            self._count("tx_bytes", frame.length)
            self._push_tail(active, signals)
        return taken

    def _push_tail(self, active: _Activation, signals: _Signals) -> None:
        """A frame the backend took only in part (passt's stream keeps the
        tail) goes out as soon as the fd has room, not with the next frame:
        the peer may wait for the whole of this one before it answers, and
        the guest may send nothing more until it does (passt up to
        2023-03 even blocks in recv for the rest of a frame)."""
        try:
            if not self.backend.flush():
                self._set_writing(True)
        except OSError as exc:      # the tail cannot go: the stream is broken
            self._lose_backend(active, signals, exc)

    def _on_writable(self) -> None:
        """The backend's fd has room (loop thread): flush, then resend the
        held frame and go on with the transmitq."""
        self._serve(self._active, self._flush_and_resume)

    def _flush_and_resume(self, active: _Activation | None, signals: _Signals) -> None:
        if not self._writing:
            return
        try:
            if not self.backend.flush():
                return      # still a tail: wait for more room
        except OSError as exc:      # a frame's tail that cannot go: the stream is broken
            self._lose_backend(active, signals, exc)
            return
        self._set_writing(False)
        frame = active.tx_held if active is not None else None
        if frame is None:
            return
        active.tx_held = None
        sent = self._send(active, frame, signals)
        if sent is False:
            active.tx_held = frame
            self._set_writing(True)
            return
        self._complete_tx(active, frame.chain, signals)
        self._transmit(active, signals)
