"""The guest's ``/init``: a busybox ash script, PID 1 of the default guest.

What it does and which kernel command-line options it reads is documented
in docs/guest.md; keep the two in step.  Facts it relies on:

* The kernel starts ``/init`` from the initramfs with ``/dev/console`` as
  stdin/stdout/stderr (init/main.c: console_on_rootfs), so the archive must
  hold ``dev/console``.
* Options with a dot (``kvmlite.cmd=``) are taken by the kernel for a module
  that does not exist and are neither passed to init's argv nor its
  environment (init/main.c: unknown_bootoption), so the script reads
  ``/proc/cmdline``.
* Ctrl-Alt-Del reboots at once unless ``kernel.ctrl-alt-del`` is 0; then
  the kernel sends SIGINT to PID 1 instead (kernel/reboot.c: ctrl_alt_del).
* A trapped signal makes ash's ``wait`` return at once (POSIX wait), so PID
  1 waits for its child with ``wait`` and not in the foreground.
* The network (``kvmlite.net=``) is :mod:`kvmlite.guest.netinit`'s part;
  shares, a 9p root and the overlay (``kvmlite.9p=``, ``rootfstype=9p``,
  ``kvmlite.overlay=1``) are :mod:`kvmlite.guest.shareinit`'s, and so is
  the second stage that runs a command after ``switch_root``.
* Module lists: :data:`MODULES_LIST` is loaded at every boot; the on-demand
  groups (``MODULES_LIST-9p``, ``MODULES_LIST-overlay``) only when the
  command line asks for them.  A module already in ``/sys/module`` is skipped,
  so groups may share dependencies.
* The exit status goes out as one byte to I/O port 0x501 (kvmlite's exit
  device; offset 1281 of ``/dev/port``), or through ``kvmlite-exit`` when
  the kernel has no ``/dev/port`` (CONFIG_DEVPORT off in Debian's cloud kernel).
"""

from __future__ import annotations

import hashlib

from kvmlite.arch.x86.layout import PORT_GUEST_EXIT
from kvmlite.guest import netinit, shareinit

READY_MARKER = "kvmlite-init: ready"
MODULES_LIST = "etc/kvmlite/modules"     # load order, one path under /lib/modules per line
EXIT_HELPER = "sbin/kvmlite-exit"
STATUS_SETUP_FAILED = 125                # init could not prepare what the command needs

INIT_SCRIPT = r"""#!/bin/sh
# kvmlite guest init: see docs/guest.md for the kernel command-line options.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM="${TERM:-linux}"
set -f
CMDLINE=/proc/cmdline
NEWROOT=/mnt
MODULE_DIR=/lib/modules
MODULE_LIST=/__MODULES_LIST__
SYS_MODULE=/sys/module
DEV_PORT=/dev/port
EXIT_HELPER=/__EXIT_HELPER__
BUSYBOX=/bin/busybox
INIT_SELF=/init
SESSION_SH=/bin/sh               # runs the session wrapper (the initramfs's, then the second stage's)
CHILD_SH=/bin/sh                 # runs the command or the login shell (the root's when there is one)
ROOT_MOUNT=

say() { echo "kvmlite-init: $*"; }
debug() { [ -n "$DEBUG" ] && say "$@"; return 0; }

mount_basics() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mkdir -p /dev/pts /dev/shm
    mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
    mount -t tmpfs -o mode=1777 tmpfs /dev/shm
    ln -sf /proc/self/fd /dev/fd
}

read_cmdline() {
    ROOT= ROOTFSTYPE= ROOTFLAGS= ROOTMODE=rw CMD= DEBUG= NET= SHARES= OVERLAY= INIT=
    for word in $(cat "$CMDLINE"); do
        case "$word" in
            root=*) ROOT="${word#root=}" ;;
            rootfstype=*) ROOTFSTYPE="${word#rootfstype=}" ;;
            rootflags=*) ROOTFLAGS="${word#rootflags=}" ;;
            ro) ROOTMODE=ro ;;
            rw) ROOTMODE=rw ;;
            kvmlite.cmd=*) CMD="${word#kvmlite.cmd=}" ;;
            kvmlite.net=*) NET="${word#kvmlite.net=}" ;;
            kvmlite.9p=*) SHARES="${word#kvmlite.9p=}" ;;
            kvmlite.overlay=*) OVERLAY="${word#kvmlite.overlay=}" ;;
            init=*) INIT="${word#init=}" ;;
            kvmlite.debug) DEBUG=1 ;;
        esac
    done
}

# Kernel command-line words "<module>.<param>=<value>" are parameters of a
# module; modprobe passes them on, insmod does not, so do it here (this is how
# virtio_mmio.device=... reaches a modular virtio_mmio).
module_params() {
    _mod=$(basename "$1" .ko | tr - _)
    for _w in $(cat "$CMDLINE"); do
        case "$_w" in
            "$_mod".*=*) echo "${_w#"$_mod".}" ;;
        esac
    done
}

load_module_list() {
    [ -f "$1" ] || return 0
    while read -r module; do
        [ -d "$SYS_MODULE/${module%.ko}" ] && continue
        if ! out=$(insmod "$MODULE_DIR/$module" $(module_params "$module") 2>&1); then
            say "insmod $module failed: $out"
        else
            debug "loaded $module"
        fi
    done < "$1"
}

# Every boot's modules, then the groups this command line needs.
load_modules() {
    load_module_list "$MODULE_LIST"
    for group in $(share_module_groups); do
        load_module_list "$MODULE_LIST-$group"
    done
}

__NETWORK__

__SHARES__

find_root_device() {
    tries=0
    while [ $tries -lt 100 ]; do
        case "$ROOT" in
            LABEL=*|UUID=*) dev=$(findfs "$ROOT" 2>/dev/null) && { echo "$dev"; return 0; } ;;
            *) [ -b "$ROOT" ] && { echo "$ROOT"; return 0; } ;;
        esac
        sleep 0.1
        tries=$((tries + 1))
    done
    return 1
}

# A disk root: at $NEWROOT, or with kvmlite.overlay=1 read-only below an overlay there.
mount_disk_root() {
    dev=$(find_root_device) || { say "root device $ROOT did not appear"; return 1; }
    if [ "$OVERLAY" = 1 ]; then
        mkdir -p "$ROOT_LAYERS/lower"
        mount ${ROOTFSTYPE:+-t "$ROOTFSTYPE"} -o "ro${ROOTFLAGS:+,$ROOTFLAGS}" "$dev" "$ROOT_LAYERS/lower" ||
            { say "cannot mount $dev"; return 1; }
        mount_overlay "$ROOT_LAYERS/lower"
        return
    fi
    opts="$ROOTMODE${ROOTFLAGS:+,$ROOTFLAGS}"
    mount ${ROOTFSTYPE:+-t "$ROOTFSTYPE"} -o "$opts" "$dev" "$NEWROOT" || { say "cannot mount $dev on /mnt"; return 1; }
}

# root=: a disk is chrooted into (when it has /bin/sh), a 9p root is
# switched to (SWITCH) after the shares are mounted beneath it.
mount_root() {
    CHROOT= ROOTED= SWITCH=
    [ -n "$ROOT" ] || return 0
    if [ "$ROOTFSTYPE" = 9p ]; then
        mount_9p_root || return 1
        SWITCH=1
    else
        mount_disk_root || return 1
    fi
    ROOTED=$NEWROOT ROOT_MOUNT=$NEWROOT
    if [ -n "$SWITCH" ]; then
        net_share_resolv_conf "$NEWROOT"
    elif [ -e "$NEWROOT/bin/sh" ] || [ -L "$NEWROOT/bin/sh" ]; then
        CHROOT=$NEWROOT
        for fs in proc sys dev dev/pts; do
            [ -d "$NEWROOT/$fs" ] && mount -o bind "/$fs" "$NEWROOT/$fs"
        done
        net_share_resolv_conf "$NEWROOT"
    fi
    debug "root $ROOT mounted on $NEWROOT${CHROOT:+ (chroot)}${SWITCH:+ (switch_root)}"
}

decode_command() {
    printf '%s' "$CMD" | base64 -d 2>/dev/null
}

# The child's session leader is a small wrapper shell: when a session leader
# exits, the kernel hangs up its controlling tty, and a hangup throws away
# console output not yet sent (seen on multi-CPU guests, where the command
# exits on one CPU while another is still sending its output).  So the
# wrapper runs the command, waits for the console to drain (stty re-applies
# the settings with tcsetattr(TCSADRAIN)), and only then exits with the
# command's status.  Its SIGINT trap is a handler, not "ignore", so ^C still
# reaches the command.
SESSION_WRAPPER='trap : INT; "$@"; rc=$?; stty "$(stty -g)" 2>/dev/null; exit $rc'

start_child() {
    # setsid + cttyhack: the child gets the console as its controlling
    # tty, so job control and ^C work in it (and never reach PID 1).
    if [ -n "$CHROOT" ]; then
        setsid cttyhack $SESSION_SH -c "$SESSION_WRAPPER" kvmlite-session chroot "$CHROOT" $CHILD_SH "$@" &
    else
        setsid cttyhack $SESSION_SH -c "$SESSION_WRAPPER" kvmlite-session $CHILD_SH "$@" &
    fi
    CHILD=$!
}

wait_child() {
    while :; do
        wait "$CHILD"
        STATUS=$?
        kill -0 "$CHILD" 2>/dev/null || return 0
    done
}

write_status() {
    if [ -c "$DEV_PORT" ]; then
        printf "\\$(printf %03o "$1")" | dd of="$DEV_PORT" bs=1 seek=__PORT__ count=1 conv=notrunc 2>/dev/null
    else
        "$EXIT_HELPER" "$1"
    fi
}

finish() {
    debug "exit status $1"
    sync
    write_status "$1"
    power_off
}

power_off() {
    sync
    [ -n "$ROOT_MOUNT" ] && mount -o remount,ro "$ROOT_MOUNT" 2>/dev/null
    poweroff -f
    while :; do sleep 60; done
}

on_ctrl_alt_del() {
    say "ctrl-alt-del: powering off"
    kill -TERM -1 2>/dev/null
    sleep 0.2
    power_off
}

# The command (kvmlite.cmd) or a login shell; its status ends the VM.
run_session() {
    if [ -n "$CMD" ]; then
        command=$(decode_command) || { say "kvmlite.cmd is not valid base64"; finish __SETUP_FAILED__; }
        start_child -c "$command"
    else
        start_child -l
    fi
    wait_child
    finish "$STATUS"
}

# Everything after the basics: what the command line asks for.
boot() {
    read_cmdline
    [ -n "$DEBUG" ] && set -x
    load_modules
    hostname kvmlite
    setup_network
    say ready
    mount_root || [ -z "$CMD" ] || finish __SETUP_FAILED__
    mount_shares
    if [ -n "$SWITCH" ]; then
        switch_to_root || [ -z "$CMD" ] || finish __SETUP_FAILED__
    fi
    run_session
}

main() {
    if [ "$1" = --stage2 ]; then
        stage2
        return
    fi
    mount_basics
    echo 0 > /proc/sys/kernel/ctrl-alt-del
    trap on_ctrl_alt_del INT
    boot
}

main "$@"
"""


def render() -> str:
    """The script with its constants filled in."""
    return (INIT_SCRIPT
            .replace("__NETWORK__", netinit.init_functions().strip("\n"))
            .replace("__SHARES__", shareinit.init_functions().strip("\n"))
            .replace("__MODULES_LIST__", MODULES_LIST)
            .replace("__EXIT_HELPER__", EXIT_HELPER)
            .replace("__PORT__", str(PORT_GUEST_EXIT))
            .replace("__SETUP_FAILED__", str(STATUS_SETUP_FAILED)))


def files() -> dict[str, tuple[bytes, int]]:
    """Scripts the init runs besides itself: archive path -> (data, mode)."""
    return {netinit.UDHCPC_SCRIPT_PATH: (netinit.UDHCPC_SCRIPT.encode(), 0o755)}


def digest() -> str:
    """SHA256 of the rendered script and :func:`files`: part of the setup
    manifest's inputs, so a change to either makes ``kvmlite setup`` rebuild."""
    h = hashlib.sha256(render().encode())
    for path, (data, mode) in sorted(files().items()):
        h.update(f"\0{path}\0{mode:o}\0".encode() + data)
    return h.hexdigest()
