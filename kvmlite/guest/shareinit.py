"""The default guest's virtio-9p part: shares, a 9p root, a tmpfs overlay.

The VMM lists its shares with one kernel command-line word (docs/guest.md):

* ``kvmlite.9p=TAG1,TAG2:ro,...`` — every share's tag in order, read-only
  ones with ``:ro``; the init loads the 9p modules (only then) and mounts
  each at ``/mnt/TAG`` (inside the root when there is one);
* ``root=TAG rootfstype=9p`` — that share is the root: the init mounts it
  and ``switch_root``\\ s into it, to its ``/sbin/init`` (or ``init=``), or
  with ``kvmlite.cmd=`` to a second stage of this init that runs the
  command and reports its status (:data:`STAGE_DIR`);
* ``kvmlite.overlay=1`` — the root (9p or disk) is mounted read-only as
  the lower layer of an overlayfs whose upper layer is a tmpfs, so writes
  stay in the VM's memory.

Facts relied on:

* The 9p transport finds a share by its mount tag, given as the "device"
  of ``mount -t 9p`` (net/9p/trans_virtio.c: p9_virtio_create), and needs
  no wait: virtio_pci probes while ``insmod`` registers it.
* busybox ``switch_root`` must run as PID 1, empties the initramfs
  (without crossing into other filesystems), moves the new root onto ``/``
  and executes the new init; it does not move /proc, /sys and /dev, so the
  init moves them first (``mount --move``; their submounts go along, as
  do the shares mounted beneath the new root).
* After ``switch_root`` nothing of the initramfs is reachable, so the
  second stage runs from a tmpfs on the new root's ``/run``: a copy of
  busybox, of ``/init`` and of ``kvmlite-exit``.  Debian's busybox-static
  runs its own applets first (FEATURE_SH_STANDALONE), so the second stage
  does not depend on the new root's tools; only the command's ``/bin/sh``
  is the new root's.
* overlayfs accepts a remote (9p) filesystem as a lower layer; its upper
  and work directories must be on one filesystem that supports
  ``trusted.*`` xattrs and RENAME_WHITEOUT, which tmpfs does
  (Documentation/filesystems/overlayfs.rst).
"""

from __future__ import annotations

P9_MOUNT_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000"
STAGE_DIR = "run/kvmlite"            # inside the new root, on a tmpfs of its own
ROOT_LAYERS = "run/kvmlite-root"     # in the initramfs: the overlay's lower and its tmpfs
DEFAULT_INIT = "/sbin/init"

# Sourced into /init after say(), debug() and load_module_list(); the
# variables in capitals are constants that the unit tests override.
INIT_FUNCTIONS = r"""
P9_OPTS=__P9_OPTS__
PROC_FILESYSTEMS=/proc/filesystems
ROOT_LAYERS=/__ROOT_LAYERS__
STAGE_DIR=/__STAGE_DIR__
NL='
'

# Words of the command line that ask for on-demand module groups.
share_module_groups() {
    { [ -n "$SHARES" ] || [ "$ROOTFSTYPE" = 9p ]; } && echo 9p
    [ "$OVERLAY" = 1 ] && echo overlay
    return 0
}

have_9p() {
    while read -r _a _b; do
        [ "$_a" = 9p ] || [ "$_b" = 9p ] && return 0
    done < "$PROC_FILESYSTEMS"
    return 1
}

# mount -t 9p TAG DIR OPTS; on failure the last line of mount's complaint.
mount_9p() {
    _out=$(mount -t 9p -o "$3" "$1" "$2" 2>&1) && return 0
    echo "${_out##*"$NL"}"
    return 1
}

# kvmlite.9p=TAG1,TAG2:ro,...: each share at /mnt/TAG (under the root when
# there is one), one line per share that cannot be mounted.  The 9p root's
# own tag is already mounted.
mount_shares() {
    [ -n "$SHARES" ] || return 0
    have_9p || { say "kvmlite.9p is set but this kernel has no 9p filesystem: no shares mounted"; return 0; }
    _ifs=$IFS; IFS=,; set -- $SHARES; IFS=$_ifs
    for _share; do
        _tag=${_share%:ro}
        [ -n "$_tag" ] || continue
        [ "$ROOTFSTYPE" = 9p ] && [ "$_tag" = "$ROOT" ] && [ -n "$ROOTED" ] && continue
        _opts=$P9_OPTS
        [ "$_tag" = "$_share" ] || _opts="$_opts,ro"
        _dir="$NEWROOT${ROOTED:+/mnt}/$_tag"
        if ! _err=$(mkdir -p "$_dir" 2>&1); then
            say "cannot mount share $_tag on /mnt/$_tag: ${_err##*"$NL"}"
        elif _err=$(mount_9p "$_tag" "$_dir" "$_opts"); then
            debug "share $_tag on /mnt/$_tag ($_opts)"
        else
            say "cannot mount share $_tag on /mnt/$_tag: $_err"
        fi
    done
}

# The root at $NEWROOT: the 9p share $ROOT (read-only when kvmlite.9p
# says TAG:ro), or with kvmlite.overlay=1 an overlay of it (read-only,
# lower) and a tmpfs (upper).
mount_9p_root() {
    have_9p || { say "root $ROOT is a 9p share but this kernel has no 9p filesystem"; return 1; }
    _flags="$P9_OPTS${ROOTFLAGS:+,$ROOTFLAGS}"
    _mode=$ROOTMODE
    case ",$SHARES," in *",$ROOT:ro,"*) _mode=ro ;; esac
    if [ "$OVERLAY" != 1 ]; then
        _err=$(mount_9p "$ROOT" "$NEWROOT" "$_mode,$_flags") ||
            { say "cannot mount the 9p root $ROOT: $_err"; return 1; }
        return 0
    fi
    mkdir -p "$ROOT_LAYERS/lower"
    _err=$(mount_9p "$ROOT" "$ROOT_LAYERS/lower" "ro,$_flags") ||
        { say "cannot mount the 9p root $ROOT: $_err"; return 1; }
    mount_overlay "$ROOT_LAYERS/lower"
}

# overlayfs on $NEWROOT: $1 read-only below, a fresh tmpfs above.
mount_overlay() {
    mkdir -p "$ROOT_LAYERS/rw"
    mount -t tmpfs -o mode=0755 tmpfs "$ROOT_LAYERS/rw" || { say "cannot mount the overlay's tmpfs"; return 1; }
    mkdir -p "$ROOT_LAYERS/rw/upper" "$ROOT_LAYERS/rw/work"
    _opts="lowerdir=$1,upperdir=$ROOT_LAYERS/rw/upper,workdir=$ROOT_LAYERS/rw/work"
    mount -t overlay -o "$ROOTMODE,$_opts" overlay "$NEWROOT" ||
        { say "cannot mount the overlay on the root"; return 1; }
    debug "root: overlay of $1 and a tmpfs"
}

# The second stage's files on a tmpfs at the new root's /run.
prepare_stage2() {
    [ -d "$NEWROOT/run" ] || mkdir -p "$NEWROOT/run" 2>/dev/null ||
        { say "the root has no /run for the init's second stage"; return 1; }
    mount -t tmpfs -o mode=0755 tmpfs "$NEWROOT/run" || { say "cannot mount a tmpfs on the root's /run"; return 1; }
    mkdir -p "$NEWROOT$STAGE_DIR"
    cp "$BUSYBOX" "$INIT_SELF" "$EXIT_HELPER" "$NEWROOT$STAGE_DIR/" || { say "cannot copy the init's second stage"; return 1; }
}

# Hand PID 1 to the root at $NEWROOT: its init (init=, default /sbin/init),
# or with kvmlite.cmd this init's second stage.  Returns only on failure.
switch_to_root() {
    _init=${INIT:-__DEFAULT_INIT__}
    if [ -z "$CMD" ] && { [ -e "$NEWROOT$_init" ] || [ -L "$NEWROOT$_init" ]; }; then
        set -- "$_init"
    else
        [ -n "$CMD" ] || say "no $_init in the root: a shell instead"
        prepare_stage2 || return 1
        set -- "$STAGE_DIR/busybox" sh "$STAGE_DIR/init" --stage2
    fi
    for _fs in dev proc sys; do
        # a root that lacks the directory (a view without it) gets it where it can (an overlay)
        [ -d "$NEWROOT/$_fs" ] || mkdir -p "$NEWROOT/$_fs" 2>/dev/null
        [ -d "$NEWROOT/$_fs" ] && mount --move "/$_fs" "$NEWROOT/$_fs"
    done
    debug "switch_root $NEWROOT $*"
    exec switch_root "$NEWROOT" "$@"
}

# PID 1 again, in the new root, run by the busybox copied to $STAGE_DIR.
stage2() {
    trap on_ctrl_alt_del INT
    read_cmdline
    [ -n "$DEBUG" ] && set -x
    ROOT_MOUNT=/ EXIT_HELPER="$STAGE_DIR/kvmlite-exit" SESSION_SH="$STAGE_DIR/busybox sh"
    [ -e /bin/sh ] || [ -L /bin/sh ] || CHILD_SH="$STAGE_DIR/busybox sh"
    run_session
}
"""


def init_functions() -> str:
    """:data:`INIT_FUNCTIONS` with its constants filled in."""
    return (INIT_FUNCTIONS
            .replace("__P9_OPTS__", P9_MOUNT_OPTIONS)
            .replace("__ROOT_LAYERS__", ROOT_LAYERS)
            .replace("__STAGE_DIR__", STAGE_DIR)
            .replace("__DEFAULT_INIT__", DEFAULT_INIT))
