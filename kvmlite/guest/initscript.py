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
* The network (``kvmlite.net=``) is :mod:`kvmlite.guest.netinit`'s part.
* The exit status goes out as one byte to I/O port 0x501 (kvmlite's exit
  device; offset 1281 of ``/dev/port``), or through ``kvmlite-exit`` when
  the kernel has no ``/dev/port`` (CONFIG_DEVPORT off in Debian's cloud kernel).
"""

from __future__ import annotations

import hashlib

from kvmlite.arch.x86.layout import PORT_GUEST_EXIT
from kvmlite.guest import netinit

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
    ROOT= ROOTFSTYPE= ROOTFLAGS= ROOTMODE=rw CMD= DEBUG= NET=
    for word in $(cat "$CMDLINE"); do
        case "$word" in
            root=*) ROOT="${word#root=}" ;;
            rootfstype=*) ROOTFSTYPE="${word#rootfstype=}" ;;
            rootflags=*) ROOTFLAGS="${word#rootflags=}" ;;
            ro) ROOTMODE=ro ;;
            rw) ROOTMODE=rw ;;
            kvmlite.cmd=*) CMD="${word#kvmlite.cmd=}" ;;
            kvmlite.net=*) NET="${word#kvmlite.net=}" ;;
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

load_modules() {
    [ -f /__MODULES_LIST__ ] || return 0
    while read -r module; do
        if ! out=$(insmod "/lib/modules/$module" $(module_params "$module") 2>&1); then
            say "insmod $module failed: $out"
        else
            debug "loaded $module"
        fi
    done < /__MODULES_LIST__
}

__NETWORK__

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

mount_root() {
    CHROOT=
    [ -n "$ROOT" ] || return 0
    dev=$(find_root_device) || { say "root device $ROOT did not appear"; return 1; }
    opts="$ROOTMODE${ROOTFLAGS:+,$ROOTFLAGS}"
    mount ${ROOTFSTYPE:+-t "$ROOTFSTYPE"} -o "$opts" "$dev" /mnt || { say "cannot mount $dev on /mnt"; return 1; }
    if [ -e /mnt/bin/sh ] || [ -L /mnt/bin/sh ]; then
        CHROOT=/mnt
        for fs in proc sys dev dev/pts; do
            [ -d "/mnt/$fs" ] && mount -o bind "/$fs" "/mnt/$fs"
        done
        net_share_resolv_conf /mnt
    fi
    debug "root $dev mounted on /mnt${CHROOT:+ (chroot)}"
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
        setsid cttyhack /bin/sh -c "$SESSION_WRAPPER" kvmlite-session chroot "$CHROOT" /bin/sh "$@" &
    else
        setsid cttyhack /bin/sh -c "$SESSION_WRAPPER" kvmlite-session /bin/sh "$@" &
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
    if [ -c /dev/port ]; then
        printf "\\$(printf %03o "$1")" | dd of=/dev/port bs=1 seek=__PORT__ count=1 conv=notrunc 2>/dev/null
    else
        /__EXIT_HELPER__ "$1"
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
    [ -n "$ROOT" ] && mount -o remount,ro /mnt 2>/dev/null
    poweroff -f
    while :; do sleep 60; done
}

on_ctrl_alt_del() {
    say "ctrl-alt-del: powering off"
    kill -TERM -1 2>/dev/null
    sleep 0.2
    power_off
}

main() {
    mount_basics
    echo 0 > /proc/sys/kernel/ctrl-alt-del
    trap on_ctrl_alt_del INT
    read_cmdline
    [ -n "$DEBUG" ] && set -x
    load_modules
    hostname kvmlite
    setup_network
    say ready
    mount_root || [ -z "$CMD" ] || finish __SETUP_FAILED__
    if [ -n "$CMD" ]; then
        command=$(decode_command) || { say "kvmlite.cmd is not valid base64"; finish __SETUP_FAILED__; }
        start_child -c "$command"
    else
        start_child -l
    fi
    wait_child
    finish "$STATUS"
}

main
"""


def render() -> str:
    """The script with its constants filled in."""
    return (INIT_SCRIPT
            .replace("__NETWORK__", netinit.init_functions().strip("\n"))
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
