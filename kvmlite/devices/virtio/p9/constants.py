"""9P2000.L protocol constants.

Values from Linux's ``include/net/9p/9p.h`` (message types, qid types, the
``P9_DOTL_*`` open flags, ``P9_STATS_*`` getattr bits, lock types and
statuses) and ``fs/9p`` (the ``P9_ATTR_*`` setattr bits); the layouts they
travel in are in :mod:`kvmlite.devices.virtio.p9.codec`.
"""

from __future__ import annotations

from enum import IntEnum

NOTAG = 0xFFFF                 # P9_NOTAG: Tversion's tag; our reply to a request too short to carry one
NOFID = 0xFFFF_FFFF            # P9_NOFID: Tattach's afid when there is no authentication
NONUNAME = 0xFFFF_FFFF         # Tattach's n_uname when the client sends a name only
MAXWELEM = 16                  # P9_MAXWELEM: names in one Twalk

HEADER_SIZE = 7                # size[4] type[1] tag[2]
IO_HEADER_SIZE = HEADER_SIZE + 4   # Rread / Rreaddir: the header and count[4] before the data
MIN_MSIZE = 4096               # the smallest msize Linux accepts (net/9p/client.c)

VERSION_9P2000_L = b"9P2000.L"
VERSION_UNKNOWN = b"unknown"

NAME_MAX = 255                 # linux/limits.h
PATH_MAX = 4096
XATTR_SIZE_MAX = 65536         # linux/limits.h: the largest xattr value
XATTR_LIST_MAX = 65536         # linux/limits.h: the largest xattr name list

U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
S64_MAX = 0x7FFF_FFFF_FFFF_FFFF


class MsgType(IntEnum):
    """enum p9_msg_t.  Only the 9P2000.L subset and the base messages it
    keeps; Topen/Tcreate/Tstat/Twstat (9P2000, 9P2000.u) are answered with
    EOPNOTSUPP like any other unknown type."""

    TLERROR = 6
    RLERROR = 7
    TSTATFS = 8
    RSTATFS = 9
    TLOPEN = 12
    RLOPEN = 13
    TLCREATE = 14
    RLCREATE = 15
    TSYMLINK = 16
    RSYMLINK = 17
    TMKNOD = 18
    RMKNOD = 19
    TRENAME = 20
    RRENAME = 21
    TREADLINK = 22
    RREADLINK = 23
    TGETATTR = 24
    RGETATTR = 25
    TSETATTR = 26
    RSETATTR = 27
    TXATTRWALK = 30
    RXATTRWALK = 31
    TXATTRCREATE = 32
    RXATTRCREATE = 33
    TREADDIR = 40
    RREADDIR = 41
    TFSYNC = 50
    RFSYNC = 51
    TLOCK = 52
    RLOCK = 53
    TGETLOCK = 54
    RGETLOCK = 55
    TLINK = 70
    RLINK = 71
    TMKDIR = 72
    RMKDIR = 73
    TRENAMEAT = 74
    RRENAMEAT = 75
    TUNLINKAT = 76
    RUNLINKAT = 77
    TVERSION = 100
    RVERSION = 101
    TAUTH = 102
    RAUTH = 103
    TATTACH = 104
    RATTACH = 105
    TFLUSH = 108
    RFLUSH = 109
    TWALK = 110
    RWALK = 111
    TREAD = 116
    RREAD = 117
    TWRITE = 118
    RWRITE = 119
    TCLUNK = 120
    RCLUNK = 121
    TREMOVE = 122
    RREMOVE = 123


# enum p9_qid_t
QT_DIR = 0x80
QT_SYMLINK = 0x02
QT_FILE = 0x00

# P9_DOTL_* open flags (Tlopen, Tlcreate).  Their values are x86 Linux's
# O_* values, but they are protocol constants: translated, never passed on.
DOTL_RDONLY = 0o0
DOTL_WRONLY = 0o1
DOTL_RDWR = 0o2
DOTL_NOACCESS = 0o3
DOTL_ACCMODE = 0o3
DOTL_CREATE = 0o100
DOTL_EXCL = 0o200
DOTL_NOCTTY = 0o400
DOTL_TRUNC = 0o1000
DOTL_APPEND = 0o2000
DOTL_NONBLOCK = 0o4000
DOTL_DSYNC = 0o10000
DOTL_FASYNC = 0o20000
DOTL_DIRECT = 0o40000
DOTL_LARGEFILE = 0o100000
DOTL_DIRECTORY = 0o200000
DOTL_NOFOLLOW = 0o400000
DOTL_NOATIME = 0o1000000
DOTL_CLOEXEC = 0o2000000
DOTL_SYNC = 0o4000000

DOTL_AT_REMOVEDIR = 0x200      # Tunlinkat flags

# P9_STATS_* (Tgetattr request_mask, Rgetattr valid)
STATS_MODE = 0x0001
STATS_NLINK = 0x0002
STATS_UID = 0x0004
STATS_GID = 0x0008
STATS_RDEV = 0x0010
STATS_ATIME = 0x0020
STATS_MTIME = 0x0040
STATS_CTIME = 0x0080
STATS_INO = 0x0100
STATS_SIZE = 0x0200
STATS_BLOCKS = 0x0400
STATS_BASIC = 0x07FF
STATS_ALL = 0x3FFF

# P9_ATTR_* (Tsetattr valid), the bits of struct iattr's ia_valid
ATTR_MODE = 1 << 0
ATTR_UID = 1 << 1
ATTR_GID = 1 << 2
ATTR_SIZE = 1 << 3
ATTR_ATIME = 1 << 4
ATTR_MTIME = 1 << 5
ATTR_CTIME = 1 << 6
ATTR_ATIME_SET = 1 << 7
ATTR_MTIME_SET = 1 << 8

# Tlock / Tgetlock
LOCK_TYPE_RDLCK = 0
LOCK_TYPE_WRLCK = 1
LOCK_TYPE_UNLCK = 2
LOCK_FLAGS_BLOCK = 1
LOCK_FLAGS_RECLAIM = 2
LOCK_SUCCESS = 0
LOCK_BLOCKED = 1
LOCK_ERROR = 2
LOCK_GRACE = 3

# Txattrcreate flags: linux/xattr.h
XATTR_CREATE = 1
XATTR_REPLACE = 2

V9FS_MAGIC = 0x01021997        # Rstatfs type: linux/magic.h, what a 9p mount reports
