"""A 9P2000.L file server for virtio-9p: host directories shared with the
guest, confined beneath their root (docs/9p.md).

:class:`P9Server` takes the bytes of one T-message and returns those of its
R-message; it knows nothing of virtqueues.  :mod:`.codec` is the wire
format, :mod:`.fs` the confined file system, :mod:`.fids` the fid table,
:mod:`.locks` byte-range locks, :mod:`.syscalls` the kernel calls
Python's ``os`` lacks.
"""

from kvmlite.devices.virtio.p9.codec import MessageError, Qid, decode, encode
from kvmlite.devices.virtio.p9.fs import Share, ShareError
from kvmlite.devices.virtio.p9.server import DEFAULT_MAX_MSIZE, P9Server

__all__ = ["DEFAULT_MAX_MSIZE", "MessageError", "P9Server", "Qid", "Share", "ShareError", "decode", "encode"]
