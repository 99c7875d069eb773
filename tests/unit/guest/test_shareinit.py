"""The init's 9p paths (shares, a 9p root, the overlay, switch_root and the
second stage), run here under dash with stub commands.

The real /init is sourced without its last line (it sets PATH, so PATH is
set to the stubs again after it, and checked); ``mount``, ``insmod``,
``switch_root``, ``cp``, ``hostname``, ``ip`` and ``findfs`` are stubs that
append their argv to a log, and every path the init touches (the new root,
the module lists, /sys/module, /proc/filesystems, the overlay's layers)
points into a temporary directory.  ``run_session`` and ``finish`` are
replaced by functions that log and end the script, so nothing runs a
session or writes an exit status.  Why dash and not busybox: see
test_netinit.py.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmlite.guest import initramfs, initscript, shareinit

from .conftest import require_tool

P9 = shareinit.P9_MOUNT_OPTIONS
STUB = """#!/bin/sh
echo "{name} $*" >> "$STUB_LOG"
{extra}
"""
STUB_EXTRA = {
    # `mount` fails, as busybox's does, when its argv holds $MOUNT_FAIL.
    "mount": 'case " $* " in *" $MOUNT_FAIL "*) [ -n "$MOUNT_FAIL" ] && '
             '{ echo "mount: mounting $MOUNT_FAIL on somewhere failed: No such file or directory" >&2; exit 255; } ;; esac',
    "insmod": "",
    "switch_root": "",
    "cp": "",
    "hostname": "",
    "ip": "",
    "findfs": "echo /dev/vdb",
    "sleep": "",
}
REAL_TOOLS = ("cat", "mkdir", "basename", "tr")
BASE = ("virtio_ring.ko", "virtio.ko", "virtio_pci.ko")
GROUPS = {"9p": ("9pnet.ko", "9pnet_virtio.ko", "netfs.ko", "fscache.ko", "9p.ko"), "overlay": ("overlay.ko",)}
STAGE = "/" + shareinit.STAGE_DIR


@dataclass
class Boot:
    stdout: str
    calls: list[str]

    def of(self, *commands: str) -> list[str]:
        """The logged calls of these commands, in order."""
        return [c for c in self.calls if c.split()[0] in commands]


class Guest:
    """A fake guest filesystem for the init's variables, and the stubs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stubs = root / "stubs"
        self.stubs.mkdir()
        for name, extra in STUB_EXTRA.items():
            stub = self.stubs / name
            stub.write_text(STUB.format(name=name, extra=extra))
            stub.chmod(0o755)
        for tool in REAL_TOOLS:
            (self.stubs / tool).symlink_to(require_tool(tool))
        self.newroot = root / "newroot"
        self.newroot.mkdir()
        self.lists = root / "lists"
        self.lists.mkdir()
        (self.lists / "modules").write_text("".join(f"{m}\n" for m in BASE))
        for group, modules in GROUPS.items():
            (self.lists / f"modules-{group}").write_text("".join(f"{m}\n" for m in modules))
        self.sys_module = root / "sys-module"
        self.sys_module.mkdir()
        self.filesystems = root / "filesystems"
        self.filesystems.write_text("nodev\tsysfs\nnodev\ttmpfs\nnodev\t9p\n\text4\n")
        self.layers = root / "layers"
        self.log = root / "calls.log"

    @property
    def mods(self) -> Path:
        return self.root / "lib-modules"

    def root_tree(self, *paths: str) -> None:
        """Directories (or, ending in a name with no slash after 'bin/', files) in the new root."""
        for path in paths:
            target = self.newroot / path
            if path.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("")

    def boot(self, cmdline: str, *, then: str = "boot", env: dict[str, str] | None = None) -> Boot:
        """``cmdline`` as /proc/cmdline, then the init's ``boot`` (or ``then``)."""
        (self.root / "cmdline").write_text(cmdline + "\n")
        script = f"""
            . "{self.library()}"
            PATH="{self.stubs}"
            for tool in mount insmod switch_root cp hostname ip findfs; do
                [ "$(command -v $tool)" = "{self.stubs}/$tool" ] || {{ echo "$tool is not the stub" >&2; exit 99; }}
            done
            CMDLINE="{self.root}/cmdline" NEWROOT="{self.newroot}" MODULE_DIR="{self.mods}"
            MODULE_LIST="{self.lists}/modules" SYS_MODULE="{self.sys_module}" DEV_PORT="{self.root}/no-port"
            PROC_FILESYSTEMS="{self.filesystems}" ROOT_LAYERS="{self.layers}" NET_SYSFS="{self.root}/no-net"
            RESOLV_CONF="{self.root}/resolv.conf" EXIT_HELPER=/sbin/kvmlite-exit
            run_session() {{ echo "session chroot=$CHROOT root_mount=$ROOT_MOUNT" >> "$STUB_LOG"; exit 0; }}
            finish() {{ echo "finish $1" >> "$STUB_LOG"; exit 0; }}
            {then}
        """
        self.log.write_text("")
        done = subprocess.run([require_tool("dash"), "-c", script], capture_output=True, text=True, timeout=30,
                              cwd=self.root, env={"PATH": str(self.stubs), "STUB_LOG": str(self.log), **(env or {})})
        assert done.returncode == 0 and done.stderr == "", (done.returncode, done.stderr)
        return Boot(done.stdout, self.log.read_text().splitlines())

    def library(self) -> Path:
        path = self.root / "init-library.sh"
        if not path.exists():
            script = initscript.render()
            assert script.endswith('\nmain "$@"\n')
            path.write_text(script[: -len('main "$@"\n')])
        return path

    def insmods(self, *groups: str) -> list[str]:
        names = list(BASE) + [m for group in groups for m in GROUPS[group]]
        return [f"insmod {self.mods}/{name}" for name in names]


@pytest.fixture()
def guest(tmp_path: Path) -> Guest:
    return Guest(tmp_path)


CMD_TRUE = "kvmlite.cmd=dHJ1ZQ=="     # base64 of "true"


# --- shares (kvmlite.9p=) ------------------------------------------------------------------------------

def test_boot_shares_listed_modules_then_mounts_in_order_ro_where_asked(guest: Guest) -> None:
    # Act
    boot = guest.boot(f"console=ttyS0 quiet kvmlite.9p=data,src:ro,scratch {CMD_TRUE}")
    # Assert: every boot's modules, then the 9p group; then one mount per share, in order
    assert boot.of("insmod") == guest.insmods("9p")
    n = guest.newroot
    assert boot.of("mount") == [f"mount -t 9p -o {P9} data {n}/data",
                                f"mount -t 9p -o {P9},ro src {n}/src",
                                f"mount -t 9p -o {P9} scratch {n}/scratch"]
    assert all((n / tag).is_dir() for tag in ("data", "src", "scratch"))
    assert boot.calls[-1] == "session chroot= root_mount="
    assert boot.stdout == "kvmlite-init: ready\n"


def test_boot_no_shares_no_9p_modules_no_mounts(guest: Guest) -> None:
    boot = guest.boot(f"console=ttyS0 quiet {CMD_TRUE}")
    assert boot.of("insmod") == guest.insmods()
    assert boot.of("mount", "switch_root") == []
    assert boot.calls[-1] == "session chroot= root_mount="


def test_boot_share_mount_fails_one_line_next_share_mounted(guest: Guest) -> None:
    # Act: the first share's mount fails
    boot = guest.boot(f"kvmlite.9p=gone,data {CMD_TRUE}", env={"MOUNT_FAIL": "gone"})
    # Assert: one line naming the share and mount's complaint, then the next share, then the session
    assert boot.stdout == ("kvmlite-init: ready\n"
                           "kvmlite-init: cannot mount share gone on /mnt/gone: mount: mounting gone on "
                           "somewhere failed: No such file or directory\n")
    assert boot.of("mount")[-1] == f"mount -t 9p -o {P9} data {guest.newroot}/data"
    assert boot.calls[-1] == "session chroot= root_mount="


def test_boot_kernel_without_9p_one_line_no_mounts(guest: Guest) -> None:
    guest.filesystems.write_text("nodev\tsysfs\n\text4\n")
    boot = guest.boot(f"kvmlite.9p=data,src:ro {CMD_TRUE}")
    assert boot.stdout.endswith("kvmlite-init: kvmlite.9p is set but this kernel has no 9p filesystem: "
                                "no shares mounted\n")
    assert boot.of("mount") == [] and boot.calls[-1] == "session chroot= root_mount="


def test_boot_module_already_loaded_skipped(guest: Guest) -> None:
    # Arrange: virtio is there already (an earlier group loaded it)
    (guest.sys_module / "virtio").mkdir()
    # Act
    boot = guest.boot(f"kvmlite.9p=data {CMD_TRUE}")
    # Assert
    assert f"insmod {guest.mods}/virtio.ko" not in boot.calls
    assert f"insmod {guest.mods}/9p.ko" in boot.calls


def test_boot_shares_with_disk_root_mounted_under_its_mnt(guest: Guest) -> None:
    # Arrange: a disk root with a shell, so the session is chrooted into it
    guest.root_tree("bin/sh", "proc/", "mnt/")
    # Act
    boot = guest.boot(f"root=LABEL=root rootfstype=ext4 kvmlite.9p=data:ro {CMD_TRUE}")
    # Assert
    n = guest.newroot
    assert boot.of("mount") == [f"mount -t ext4 -o rw /dev/vdb {n}", f"mount -o bind /proc {n}/proc",
                                f"mount -t 9p -o {P9},ro data {n}/mnt/data"]
    assert boot.calls[-1] == f"session chroot={n} root_mount={n}"


# --- a 9p root ---------------------------------------------------------------------------------------

def test_boot_9p_root_command_switch_root_to_second_stage(guest: Guest) -> None:
    # Arrange: a host-like root
    guest.root_tree("run/", "dev/", "proc/", "sys/", "mnt/", "etc/")
    cmdline = ("console=ttyS0 root=hostfs rootfstype=9p rootflags=trans=virtio,version=9p2000.L "
               f"kvmlite.9p=hostfs:ro,data {CMD_TRUE}")
    # Act
    boot = guest.boot(cmdline)
    # Assert: the 9p modules, the root read-only (its share is), the other share beneath it, the
    # second stage on a tmpfs at /run, /dev /proc /sys moved, then switch_root to the second stage
    n = guest.newroot
    assert boot.of("insmod") == guest.insmods("9p")
    assert boot.of("mount") == [
        f"mount -t 9p -o ro,{P9},trans=virtio,version=9p2000.L hostfs {n}",
        f"mount -t 9p -o {P9} data {n}/mnt/data",
        f"mount -t tmpfs -o mode=0755 tmpfs {n}/run",
        f"mount --move /dev {n}/dev", f"mount --move /proc {n}/proc", f"mount --move /sys {n}/sys"]
    assert boot.of("cp") == [f"cp /bin/busybox /init /sbin/kvmlite-exit {n}{STAGE}/"]
    assert boot.calls[-1] == f"switch_root {n} {STAGE}/busybox sh {STAGE}/init --stage2"
    assert boot.stdout == "kvmlite-init: ready\n"


def test_boot_9p_root_without_command_switch_root_to_its_init(guest: Guest) -> None:
    guest.root_tree("sbin/init", "dev/", "proc/", "sys/")
    boot = guest.boot("root=hostfs rootfstype=9p")
    n = guest.newroot
    assert boot.of("mount") == [f"mount -t 9p -o rw,{P9} hostfs {n}", f"mount --move /dev {n}/dev",
                                f"mount --move /proc {n}/proc", f"mount --move /sys {n}/sys"]
    assert boot.calls[-1] == f"switch_root {n} /sbin/init"


def test_boot_9p_root_init_option_chosen(guest: Guest) -> None:
    guest.root_tree("bin/myinit")
    boot = guest.boot("root=hostfs rootfstype=9p init=/bin/myinit")
    assert boot.calls[-1] == f"switch_root {guest.newroot} /bin/myinit"


def test_boot_9p_root_without_init_shell_in_second_stage(guest: Guest) -> None:
    guest.root_tree("run/")
    boot = guest.boot("root=hostfs rootfstype=9p")
    assert "kvmlite-init: no /sbin/init in the root: a shell instead\n" in boot.stdout
    assert boot.calls[-1] == f"switch_root {guest.newroot} {STAGE}/busybox sh {STAGE}/init --stage2"


def test_boot_9p_root_with_overlay_mount_sequence(guest: Guest) -> None:
    # Arrange
    guest.root_tree("run/")
    # Act
    boot = guest.boot(f"root=hostfs rootfstype=9p kvmlite.9p=hostfs:ro kvmlite.overlay=1 {CMD_TRUE}")
    # Assert: 9p and overlay modules; the share read-only below, a tmpfs above, the overlay as the root
    n, layers = guest.newroot, guest.layers
    assert boot.of("insmod") == guest.insmods("9p", "overlay")
    assert boot.of("mount")[:4] == [
        f"mount -t 9p -o ro,{P9} hostfs {layers}/lower",
        f"mount -t tmpfs -o mode=0755 tmpfs {layers}/rw",
        f"mount -t overlay -o rw,lowerdir={layers}/lower,upperdir={layers}/rw/upper,workdir={layers}/rw/work "
        f"overlay {n}",
        f"mount -t tmpfs -o mode=0755 tmpfs {n}/run"]
    assert (layers / "rw" / "upper").is_dir() and (layers / "rw" / "work").is_dir()
    assert boot.calls[-1] == f"switch_root {n} {STAGE}/busybox sh {STAGE}/init --stage2"


def test_boot_9p_root_mount_fails_command_setup_failed(guest: Guest) -> None:
    boot = guest.boot(f"root=hostfs rootfstype=9p {CMD_TRUE}", env={"MOUNT_FAIL": "hostfs"})
    assert boot.stdout.endswith("kvmlite-init: cannot mount the 9p root hostfs: mount: mounting hostfs on "
                                "somewhere failed: No such file or directory\n")
    assert boot.calls[-1] == f"finish {initscript.STATUS_SETUP_FAILED}"
    assert "switch_root" not in " ".join(boot.calls)


def test_boot_9p_root_without_run_unmakeable_command_setup_failed(guest: Guest) -> None:
    boot = guest.boot(f"root=hostfs rootfstype=9p {CMD_TRUE}",
                      then='mkdir() { case "$*" in *run) return 1 ;; esac; command mkdir "$@"; }; boot')
    assert boot.stdout.endswith("kvmlite-init: the root has no /run for the init's second stage\n")
    assert boot.calls[-1] == f"finish {initscript.STATUS_SETUP_FAILED}"


def test_boot_9p_root_without_run_gets_one_where_it_can(guest: Guest) -> None:
    """A root shown through a view without /run (kvmlite sandbox's, under an
    overlay) gets the directory made, and the second stage goes on."""
    boot = guest.boot(f"root=hostfs rootfstype=9p {CMD_TRUE}")
    assert "no /run" not in boot.stdout
    assert boot.calls[-1].startswith("switch_root ")


def test_boot_disk_root_with_overlay_read_only_below(guest: Guest) -> None:
    boot = guest.boot(f"root=/dev/vda rootfstype=ext4 kvmlite.overlay=1 {CMD_TRUE}",
                      then='find_root_device() { echo /dev/vda; }; boot')
    layers = guest.layers
    assert boot.of("insmod") == guest.insmods("overlay")
    assert boot.of("mount")[:2] == [f"mount -t ext4 -o ro /dev/vda {layers}/lower",
                                    f"mount -t tmpfs -o mode=0755 tmpfs {layers}/rw"]
    assert boot.of("mount")[2].startswith(f"mount -t overlay -o rw,lowerdir={layers}/lower,")


# --- the second stage --------------------------------------------------------------------------------

def test_stage2_runs_session_from_stage_dir_root_is_slash(guest: Guest) -> None:
    boot = guest.boot(f"root=hostfs rootfstype=9p {CMD_TRUE}",
                      then='stage2; echo "never here"')
    assert boot.calls == ["session chroot= root_mount=/"]
    assert "never here" not in boot.stdout


def test_stage2_session_shell_and_exit_helper_from_stage_dir(guest: Guest) -> None:
    probe = ('run_session() { echo "$SESSION_SH|$EXIT_HELPER|$CHILD_SH" >> "$STUB_LOG"; exit 0; }; stage2')
    boot = guest.boot(f"root=hostfs rootfstype=9p {CMD_TRUE}", then=probe)
    assert boot.calls == [f"{STAGE}/busybox sh|{STAGE}/kvmlite-exit|/bin/sh"]


# --- the module groups in Python and in the init agree ----------------------------------------------

def test_share_module_groups_names_match_initramfs_groups(guest: Guest) -> None:
    boot = guest.boot("root=x rootfstype=9p kvmlite.overlay=1", then="read_cmdline; share_module_groups")
    assert boot.stdout.split() == [name for name, _ in initramfs.ON_DEMAND_MODULES]
