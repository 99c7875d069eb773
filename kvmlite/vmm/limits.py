"""Process limits a VMM needs raised.

RLIMIT_NOFILE: a virtio-9p share holds a host descriptor for each fid the
guest keeps (the Linux 9p client keeps one per cached dentry, so a 9p root
holds thousands), and every disk, NIC, vsock stream and eventfd takes
more.  The usual soft limit of 1024 is far too small for that, while the
hard limit is usually large (systemd: 524288).  :func:`raise_nofile_limit`
lifts the soft limit to the hard one, and as root (CAP_SYS_RESOURCE) the
hard one to :data:`NOFILE_TARGET` when ``/proc/sys/fs/nr_open`` allows,
as servers that hold many descriptors do.  Each share then gets its part
of it (``default_max_fids``, devices/virtio/p9/server.py).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

NOFILE_TARGET = 1 << 18          # 262144: 65536 fids for each of four shares
NR_OPEN = "/proc/sys/fs/nr_open"


def raise_nofile_limit(target: int = NOFILE_TARGET) -> int:
    """Raise RLIMIT_NOFILE's soft limit as far as allowed (at most
    ``target`` unless the hard limit is already above it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < target:
        wanted = min(target, _nr_open())
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))   # root only
            return wanted
        except (ValueError, OSError):
            pass
    new_soft = hard if hard != resource.RLIM_INFINITY else max(soft, target)
    if new_soft > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
            soft = new_soft
        except (ValueError, OSError) as exc:
            log.debug("cannot raise RLIMIT_NOFILE from %d: %s", soft, exc)
    return soft


def _nr_open() -> int:
    try:
        with open(NR_OPEN) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20
