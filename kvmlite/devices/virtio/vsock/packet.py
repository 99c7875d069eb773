"""The virtio-vsock packet header and its checks (virtio 1.2 §5.10.6).

Every packet on the rx and tx queues starts with ``struct
virtio_vsock_hdr`` (44 bytes, little-endian, packed)::

    le64 src_cid; le64 dst_cid; le32 src_port; le32 dst_port; le32 len;
    le16 type; le16 op; le32 flags; le32 buf_alloc; le32 fwd_cnt;

followed by ``len`` bytes of payload (only for ``OP_RW``).  ``buf_alloc``
and ``fwd_cnt`` are the sender's receive buffer size and the bytes it has
consumed from it so far, in every packet whatever its op (§5.10.6.3, flow
control).

Nothing here trusts a header from the guest: :func:`tx_problem` says what is
wrong with one before the device acts on it.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

HEADER = struct.Struct("<QQIIIHHIII")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 44

#: §5.10.4: the well-known CID of the host
HOST_CID = 2
#: the largest valid guest CID: 0xFFFFFFFF is VMADDR_CID_ANY (linux/vm_sockets.h)
MAX_GUEST_CID = 0xFFFF_FFFE
MIN_GUEST_CID = 3
U32 = 0xFFFF_FFFF

# §5.10.3: feature bits
VIRTIO_VSOCK_F_STREAM = 1 << 0
VIRTIO_VSOCK_F_SEQPACKET = 1 << 1       # never offered

# §5.10.6: packet types
TYPE_STREAM = 1
TYPE_SEQPACKET = 2

# §5.10.6.4: SHUTDOWN flags
SHUTDOWN_RCV = 1        # the sender will receive no more
SHUTDOWN_SEND = 2       # the sender will send no more
SHUTDOWN_BOTH = SHUTDOWN_RCV | SHUTDOWN_SEND

# §5.10.6.6: event ids
EVENT_TRANSPORT_RESET = 0
EVENT = struct.Struct("<I")             # struct virtio_vsock_event { le32 id; }

#: the largest payload one packet carries (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE)
MAX_PAYLOAD = 64 * 1024


class Op(enum.IntEnum):
    """§5.10.6: packet operations."""

    REQUEST = 1
    RESPONSE = 2
    RST = 3
    SHUTDOWN = 4
    RW = 5
    CREDIT_UPDATE = 6
    CREDIT_REQUEST = 7


_OPS = frozenset(int(op) for op in Op)


class Header(NamedTuple):
    """One ``struct virtio_vsock_hdr``."""

    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    len: int
    type: int
    op: int
    flags: int
    buf_alloc: int
    fwd_cnt: int

    def pack(self) -> bytes:
        return HEADER.pack(*self)

    @classmethod
    def unpack(cls, data: bytes) -> "Header":
        return cls(*HEADER.unpack(data))


class Verdict(enum.Enum):
    """What the device does with a tx packet :func:`tx_problem` refused."""

    DROP = "drop"       # not addressed from this guest to the host: dropped silently (vhost does the same)
    RESET = "reset"     # answered with RST (never an RST in answer to an RST)


def tx_problem(header: Header, payload: int, guest_cid: int) -> tuple[Verdict, str] | None:
    """What is wrong with a packet the guest sent, whose chain holds
    ``payload`` readable bytes after the header; None when nothing is.

    Linux's rules, made strict: only the guest's own CID may send, only to
    the host; stream sockets only; ``len`` must be exactly the bytes the
    chain carries, at most MAX_PAYLOAD, and zero for every op but RW."""
    if header.src_cid != guest_cid or header.dst_cid != HOST_CID:
        return Verdict.DROP, f"from CID {header.src_cid} to CID {header.dst_cid}, not {guest_cid} to {HOST_CID}"
    if header.type != TYPE_STREAM:
        return Verdict.RESET, f"type {header.type}: only stream sockets (1) are offered"
    if header.op not in _OPS:
        return Verdict.RESET, f"unknown op {header.op}"
    if header.len > MAX_PAYLOAD:
        return Verdict.RESET, f"len {header.len} is over the {MAX_PAYLOAD}-byte limit of a packet"
    if header.len != payload:
        return Verdict.RESET, f"len {header.len} but the chain carries {payload} bytes after the header"
    if header.op != Op.RW and header.len:
        return Verdict.RESET, f"{Op(header.op).name} with {header.len} bytes of payload"
    return None


def reply_header(to: Header, op: Op, guest_cid: int, *, flags: int = 0, buf_alloc: int = 0,
                 fwd_cnt: int = 0, length: int = 0) -> Header:
    """A packet from the host back to the sender of ``to`` (ports swapped)."""
    return Header(HOST_CID, guest_cid, to.dst_port, to.src_port, length, TYPE_STREAM, op, flags,
                  buf_alloc, fwd_cnt)
