"""The nested test host: Linux under QEMU's emulator with a real /dev/kvm.

This machine's /dev/kvm (PVM) cannot run a stock Linux guest, so tests that
need one boot a *test host* under QEMU TCG with ``-cpu max``, whose
emulated AMD SVM with nested paging lets ``kvm_amd`` load (see
/work/shared/HOST.md and docs/testing.md).  The test host:

* runs Debian's generic kernel (it has kvm-amd.ko and 9p) with an
  initramfs built here from busybox and that kernel's modules;
* mounts this machine's root read-only over virtio-9p (``hostroot``,
  ``multidevs=remap`` is required) at /mnt, plus /proc, /sys, /dev, fresh
  tmpfs mounts on /tmp, /run and /var/tmp, and a writable per-run work
  directory (9p ``work``) at the same absolute path it has here;
* shares again, read-only and at the same path, whatever it needs that
  lies under those tmpfs mounts (a checkout cloned under /tmp, a cache
  or a Python there): :func:`plan_shares`.  A path with a space or a comma
  cannot be carried by QEMU's -fsdev and the kernel command line and is
  refused in one line;
* switches its root to /mnt (``switch_root``, not ``chroot``: passt makes
  a user namespace, which the kernel refuses to a chrooted process) and
  runs the given script with /bin/sh, so the script sees this checkout,
  this Python and the cache at their usual paths;
* loads tun, veth and vhost_net and brings ``lo`` up; it has no network
  card, so a script that needs an interface with a default route (passt
  does) makes one itself (a veth pair).

passt in the test host (Debian 12's 0.0~git20230309; docs/testing.md,
"Networking in the test host"): the segfault in libc's strlen that
shared/HOST.md reports is passt's own and comes only with ``-d``/``--trace``
(on the first forwarded connection a debug message hands strlen a bad
pointer, 0x2c828; it happens outside any test host too), not 9p, its
page cache or the AVX2 build: ``passt`` and ``passt.avx2`` both work here
once nothing is chrooted.  A forwarded connection reaches the guest's
server only once the host side has sent data.

Exit codes do not cross the test host's power-off, so everything comes
back on the console: ``section NAME cmd...`` in a script prints
``@@BEGIN NAME``, the output, ``@@END NAME rc=N``; the init prints
``@@TESTHOST READY`` before and ``@@TESTHOST DONE rc=N`` after the script.
``retried_section NAME cmd...`` is the same for a self-contained step that
may run up to three times: when its output shows an inner guest's triple
fault or a sandbox whose agent never answered (the emulator's
instability), it runs again after an ``@@RETRY NAME`` line, and the last
run counts.

By hand::

    python -m tests.nested.testhost --shell         # a shell in the test host
    python -m tests.nested.testhost --guest         # watch the default guest boot under QEMU/KVM inside it
    python -m tests.nested.testhost --kvmlite       # ... and under kvmlite (kvmlite run -- CMD)
    python -m tests.nested.testhost -c 'ls -l /dev/kvm'
"""

from __future__ import annotations

import argparse
import base64
import compileall
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence, TextIO

from kvmlite.errors import KvmliteError
from kvmlite.guest import busybox, initramfs, kernel, setup
from kvmlite.guest.kmod import ModuleTree
from kvmlite.guest.progress import QUIET, Progress
from kvmlite.paths import cache_dir

REPO = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"
# kvm_amd pulls in irqbypass, kvm, ccp; 9p pulls in 9pnet, netfs, fscache;
# virtio_pci and 9pnet_virtio the virtio transport (HOST.md's list).
# tun, veth and vhost_net (which pulls in vhost, vhost_iotlb and tap) give
# the test host taps, veth pairs and /dev/vhost-net; vhost_vsock gives it
# /dev/vhost-vsock and AF_VSOCK (QEMU's vhost-vsock-pci, the vsock benchmark).
HOST_MODULES = ("kvm_amd", "virtio_pci", "9pnet_virtio", "9p", "tun", "veth", "vhost_net", "vhost_vsock")
HOST_CMDLINE = "console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off tsc=reliable"
READY = "@@TESTHOST READY"
DONE = re.compile(r"^@@TESTHOST DONE rc=(\d+)$", re.M)
# A section's end marker may follow output that did not end its line (a
# guest's console log cut mid-line): it need not start a line.
SECTION = re.compile(r"^@@BEGIN (\S+)\n(.*?)@@END \1 rc=(\d+)$", re.M | re.S)
SCRIPT_DIR = ".testhost"
SOFT_LOCKUP = b"watchdog: BUG: soft lockup"
# The hung-task detector: a task in D state for 120 s.  Seen when the test
# host froze with khugepaged blocked (CI, 2026-12-04): its ten reports, two
# minutes apart, kept the console from going silent for twenty minutes.
HUNG_TASK = re.compile(rb"INFO: task \S+ blocked for more than \d+ seconds")
KERNEL_COMPLAINT = re.compile(r"Kernel panic|BUG:|Oops|general protection fault|reboot: ")
SILENT_STALL = 300          # seconds without a byte on the console: frozen without a word
STALL_ATTEMPTS = 2
TESTHOST_CPU = os.environ.get("KVMLITE_TESTHOST_CPU", "max")   # another model for experiments
# The test host's RAM: two sandboxes (512 + 256 MiB, each collapsed into
# transparent huge pages by khugepaged) beside their start-up snapshots on
# the test host's tmpfs /tmp.  QEMU takes it from this machine as it is used.
DEFAULT_MEMORY_MB = 3072

# Directories the test host mounts a fresh tmpfs over inside its view of
# this machine's root; anything the tests need beneath them is shared again.
MASKED = ("tmp", "run", "var/tmp")
STAGE_DIR = "run/kvmlite-testhost"     # a tmpfs in the new root: stage 2 and its busybox

HOST_INIT = r"""#!/bin/sh
# kvmlite nested test host init (tests/nested/testhost.py), stage 1: in the
# initramfs, make the new root at /mnt, then switch_root into it (stage 2).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/lib/modules/$m" || echo "@@TESTHOST insmod $m failed"; done < /etc/kvmlite/modules
WORK= SHELLMODE= SHARES=
for w in $(cat /proc/cmdline); do
    case "$w" in
        testhost.work=*) WORK="${w#testhost.work=}" ;;
        testhost.share=*) SHARES="$SHARES ${w#testhost.share=}" ;;
        testhost.shell) SHELLMODE=1 ;;
    esac
done
fail() { echo "@@TESTHOST FAILED $*"; poweroff -f; sleep 60; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /mnt || fail "mount hostroot"
mount -t proc proc /mnt/proc
mount -t sysfs sysfs /mnt/sys
mount -t devtmpfs devtmpfs /mnt/dev
mkdir -p /mnt/dev/pts /mnt/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /mnt/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /mnt/dev/shm
for d in __MASKED__; do mount -t tmpfs -o mode=1777 tmpfs "/mnt/$d" || fail "tmpfs /$d"; done
# Paths under the fresh tmpfs mounts (a checkout under /tmp, the work
# directory) come back as shares of their own, at the same path, in the
# order given (a parent before what lies under it).
for s in $SHARES; do
    tag=${s%%:*}; rest=${s#*:}; mode=${rest%%:*}; path=${rest#*:}
    opts=trans=virtio,version=9p2000.L,msize=512000
    [ "$mode" = ro ] && opts="$opts,ro,cache=loose" || opts="$opts,cache=mmap"
    mkdir -p "/mnt$path"
    mount -t 9p -o "$opts" "$tag" "/mnt$path" || fail "mount share $tag at $path"
done
# Stage 2 and the busybox it runs with live on a tmpfs of their own: the
# new root has no busybox of ours, and switch_root empties the initramfs.
mkdir -p /mnt/__STAGE_DIR__
mount -t tmpfs -o mode=0755 tmpfs /mnt/__STAGE_DIR__ || fail "tmpfs /__STAGE_DIR__"
cp /bin/busybox /etc/kvmlite/stage2 /mnt/__STAGE_DIR__/ || fail "copy stage 2"
ip link set lo up
echo "@@TESTHOST READY uptime=$(cut -d' ' -f1 /proc/uptime) kvm=$([ -c /dev/kvm ] && echo yes || echo no)"
umount /proc /sys /dev 2>/dev/null
# switch_root, not chroot: a chrooted process may not make a user
# namespace (kernel/user_namespace.c: create_user_ns refuses when
# current_chrooted()), and passt makes one.  After it the test host's / is
# this machine's root, and nothing is chrooted.
exec switch_root /mnt /__STAGE_DIR__/busybox sh /__STAGE_DIR__/stage2 "$WORK" "$SHELLMODE"
fail "switch_root"
""".replace("__MASKED__", " ".join(MASKED)).replace("__STAGE_DIR__", STAGE_DIR)

# Stage 2: pid 1 in the new root, run by the busybox copied to STAGE_DIR
# (whose sh prefers its own applets: env, setsid, cttyhack, umount, poweroff).
HOST_STAGE2 = r"""# kvmlite nested test host init, stage 2 (tests/nested/testhost.py)
WORK=$1 SHELLMODE=$2
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV="HOME=/tmp TERM=${TERM:-linux} PYTHONDONTWRITEBYTECODE=1 TESTHOST_WORK=$WORK PATH=$PATH"
if [ -n "$SHELLMODE" ]; then
    setsid cttyhack env -i $ENV /bin/sh -c "cd \"$WORK\"; exec /bin/bash -l 2>/dev/null || exec /bin/sh -l"
    rc=$?
else
    env -i $ENV /bin/sh "$WORK/.testhost/script.sh" < /dev/null
    rc=$?
fi
echo "@@TESTHOST DONE rc=$rc"
sync
kill -9 -1 2>/dev/null     # whatever the script left running (a server in the work directory)
sleep 0.2
umount "$WORK"
poweroff -f
sleep 60
""".replace("__STAGE_DIR__", STAGE_DIR)

# What an inner guest's crash or freeze looks like in a step's output (the
# VMM's line; the SDK's when a sandbox's agent never came up): the steps
# retried_section reruns, and the checks that turn a second one into an
# expected failure.
GUEST_CRASH = "guest triple fault"
AGENT_SILENT = "no answer from its agent within"
PROBE_HUNG = "ProbeTimeout:"      # an SDK probe's check that never finished (tests/nested/sdk_probe.py)

SCRIPT_PREAMBLE = r"""# preamble written by tests/nested/testhost.py
section() {
    _name=$1
    shift
    echo "@@BEGIN $_name"
    "$@" 2>&1 </dev/null
    _rc=$?
    echo "@@END $_name rc=$_rc"
}
# section, run again (up to three runs) when its output shows an inner
# guest's triple fault or a sandbox whose agent never answered (a guest
# frozen at boot): the emulated test host's known instability
# (BENCHMARKS.md, "Nested instability").  Only for self-contained steps;
# the result is the last run.
retried_section() {
    _name=$1
    shift
    for _try in 1 2 3; do
        echo "@@BEGIN $_name"
        { "$@" 2>&1 </dev/null; echo $? > /tmp/.section-rc; } | tee /tmp/.section-out
        _rc=$(cat /tmp/.section-rc)
        echo "@@END $_name rc=$_rc"
        [ $_try != 3 ] && grep -q -e "__GUEST_CRASH__" -e "__AGENT_SILENT__" -e "__PROBE_HUNG__" /tmp/.section-out \
            || break
        echo "@@RETRY $_name: an inner guest crashed or froze; running the step again"
    done
}
cd "$TESTHOST_WORK" || exit 1
""".replace("__GUEST_CRASH__", GUEST_CRASH).replace("__AGENT_SILENT__", AGENT_SILENT).replace("__PROBE_HUNG__",
                                                                                             PROBE_HUNG)


class TestHostUnavailable(Exception):
    """The test host cannot be prepared here; the message says what is missing."""

    __test__ = False


class Section(NamedTuple):
    rc: int
    output: str


@dataclass
class RunResult:
    """What one boot of the test host printed, parsed."""

    console: str
    log_path: Path
    returncode: int | None
    timed_out: bool
    seconds: float
    boot_seconds: float | None = None       # until @@TESTHOST READY (wall time)
    script_rc: int | None = None
    sections: dict[str, Section] = field(default_factory=dict)
    stalled: bool = False                   # the emulated test host froze (soft lockup, hung task, silence)

    @property
    def ended_early(self) -> bool:
        """QEMU ended before the script's DONE line: the emulated test host
        powered off, rebooted or panicked in the middle of the run."""
        return not self.timed_out and not self.stalled and self.script_rc is None

    def last_words(self) -> str:
        """The test host kernel's last complaint (panic, oops, BUG), if any."""
        found = [line.strip() for line in self.console.splitlines() if KERNEL_COMPLAINT.search(line)]
        return found[-1][:200] if found else "no kernel message"

    def section(self, name: str) -> Section:
        """The section, or an AssertionError naming the console log."""
        if name not in self.sections:
            raise AssertionError(f"section {name!r} missing from the test host output; console log: {self.log_path}")
        return self.sections[name]

    def where(self) -> str:
        return f"console log: {self.log_path}"

    def guest_crash(self, name: str) -> str | None:
        """The VMM's line reporting the inner guest's triple fault in section
        ``name``'s last run (``retried_section`` runs a crashed step up to
        three times), or None."""
        output = self.section(name).output
        at = output.rfind(GUEST_CRASH)
        if at < 0:
            return None
        start, end = output.rfind("kvmlite: error:", 0, at), output.find("\n", at)
        return output[max(start, at - 200):len(output) if end < 0 else end].strip()


def parse_console(text: str) -> tuple[int | None, dict[str, Section]]:
    """The script's status and its sections from a console transcript."""
    text = text.replace("\r", "")
    done = DONE.search(text)
    sections = {m.group(1): Section(int(m.group(3)), m.group(2).rstrip("\n")) for m in SECTION.finditer(text)}
    return (int(done.group(1)) if done else None), sections


@dataclass(frozen=True)
class TestHostFiles:
    __test__ = False

    kernel: Path
    initrd: Path
    guest: setup.DefaultGuest     # the Debian cloud kernel + the default guest initramfs


def testhost_dir() -> Path:
    return cache_dir() / "testhost"


def packages_dir() -> Path:
    """Shared with ``kvmlite setup``: one download of each package."""
    return cache_dir() / "packages"


def _need(tool: str, why: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise TestHostUnavailable(f"{tool} is not installed: {why}")
    return path


def build_host_initramfs(generic: kernel.KernelFiles, bb: Path) -> bytes:
    if generic.modules is None:
        raise TestHostUnavailable(f"{generic.package} has no modules")
    resolution = ModuleTree(generic.modules).resolve(HOST_MODULES)
    if resolution.missing:
        raise TestHostUnavailable(f"{generic.package} lacks modules: {', '.join(resolution.missing)}")
    files = {"etc/kvmlite/stage2": (HOST_STAGE2.encode(), 0o755)}
    return initramfs.build(initramfs.Contents(bb, HOST_INIT, resolution.modules, files))


def prepare_files(progress: Progress = QUIET) -> TestHostFiles:
    """Fetch the packages and build both initramfs archives (cached)."""
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        _need(tool, "the test host is built from Debian packages")
    try:
        generic = kernel.debian_kernel(kernel.GENERIC_KERNEL_PACKAGE, packages_dir(), progress)
        bb = busybox.find_busybox(packages_dir(), progress)
        initrd = testhost_dir() / "host-initramfs.cpio"
        _write_if_changed(initrd, build_host_initramfs(generic, bb))
        options = setup.SetupOptions(kernel_source="debian", packages=packages_dir())
        guest = setup.prepare_guest(testhost_dir() / "guest", options, progress).guest
    except KvmliteError as exc:
        raise TestHostUnavailable(f"cannot prepare the test host: {exc}") from None
    return TestHostFiles(generic.vmlinuz, initrd, guest)


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class Share(NamedTuple):
    """A directory of this machine shared into the test host at the same path."""

    tag: str
    path: Path
    readonly: bool

    def cmdline(self) -> str:
        return f"testhost.share={self.tag}:{'ro' if self.readonly else 'rw'}:{self.path}"

    def qemu_args(self) -> list[str]:
        ro = ",readonly=on" if self.readonly else ""
        return ["-fsdev", f"local,id={self.tag},path={self.path},security_model=none{ro},multidevs=remap",
                "-device", f"virtio-9p-pci,fsdev={self.tag},mount_tag={self.tag}"]


def check_shareable(path: Path, what: str) -> Path:
    """``path`` resolved, or :class:`TestHostUnavailable` in one line when the
    kernel command line and QEMU's -fsdev cannot carry it."""
    path = path.resolve()
    if re.search(r"[\s,]", str(path)):
        raise TestHostUnavailable(f"cannot share {what} {str(path)!r} into the test host: its path holds a space "
                                  f"or a comma, which QEMU's -fsdev and the kernel command line cannot carry; "
                                  f"move it to a path without them")
    return path


def masked(path: Path) -> bool:
    """Whether the test host hides ``path`` under one of its fresh tmpfs mounts."""
    return any(path == Path("/", d) or Path("/", d) in path.parents for d in MASKED)


def needed_paths(extra: Sequence[Path] = ()) -> list[tuple[str, Path]]:
    """What a test-host script reads from this machine besides its work
    directory: this checkout, the cache (kernels, initramfs archives) and
    this Python."""
    return [("checkout", REPO), ("cache directory", cache_dir()),
            ("Python installation", Path(sys.prefix)), ("Python installation", Path(sys.base_prefix)),
            *(("directory", path) for path in extra)]


def plan_shares(workdir: Path, extra: Sequence[Path] = ()) -> list[Share]:
    """The work directory (writable) and every needed path (and ``extra``)
    the test host would otherwise hide (read-only), parents before
    children, none under another read-only one."""
    readonly: list[Path] = []
    for what, path in needed_paths(extra):
        path = check_shareable(path, what) if masked(path.resolve()) else path.resolve()
        if masked(path) and path not in readonly:
            readonly.append(path)
    readonly = [p for p in readonly if not any(q in p.parents for q in readonly)]
    shares = [Share(f"ro{i}", p, True) for i, p in enumerate(sorted(readonly, key=lambda p: len(p.parts)))]
    shares.append(Share("work", check_shareable(workdir, "work directory"), False))
    return sorted(shares, key=lambda share: len(share.path.parts))


def _check_workdir(workdir: Path) -> Path:
    workdir = check_shareable(workdir, "work directory")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


class TestHost:
    """Boots the test host; one :meth:`run` is one boot."""

    __test__ = False

    def __init__(self, files: TestHostFiles, qemu: str) -> None:
        self.files = files
        self.qemu = qemu
        self.memory_mb = DEFAULT_MEMORY_MB     # a benchmark may give it more

    @classmethod
    def prepare(cls, progress: Progress = QUIET) -> "TestHost":
        qemu = _need(QEMU, "apt-get install qemu-system-x86 (the test host runs under QEMU TCG)")
        return cls(prepare_files(progress), qemu)

    def argv(self, workdir: Path, interactive: bool = False, extra: Sequence[Path] = ()) -> list[str]:
        shares = plan_shares(workdir, extra)
        append = " ".join([HOST_CMDLINE, f"testhost.work={workdir}", *(share.cmdline() for share in shares)]
                          + (["testhost.shell"] if interactive else []))
        io = ["-nographic"] if interactive else ["-display", "none", "-serial", "stdio", "-monitor", "none"]
        return [self.qemu, "-accel", "tcg,thread=multi", "-cpu", TESTHOST_CPU, "-m", str(self.memory_mb), "-smp", "2",
                *io, "-no-reboot", "-nic", "none",
                "-kernel", str(self.files.kernel), "-initrd", str(self.files.initrd), "-append", append,
                "-fsdev", "local,id=hr,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device", "virtio-9p-pci,fsdev=hr,mount_tag=hostroot",
                *(arg for share in shares for arg in share.qemu_args())]

    def run(self, script: str, timeout: float, workdir: Path, echo: TextIO | None = None,
            extra: Sequence[Path] = ()) -> RunResult:
        """Boot, run ``script`` (sh) in the new root, power off; the console is
        saved to ``workdir/testhost-console.log`` (and copied to ``echo`` live).
        ``extra`` directories are visible read-only at their paths even
        where the test host mounts a tmpfs (/tmp, /run, /var/tmp)."""
        workdir = _check_workdir(workdir)
        compile_checkout()
        (workdir / SCRIPT_DIR).mkdir(exist_ok=True)
        (workdir / SCRIPT_DIR / "script.sh").write_text(SCRIPT_PREAMBLE + script + "\n")
        deadline = time.monotonic() + timeout
        for attempt in range(1, STALL_ATTEMPTS + 1):
            log_path = workdir / ("testhost-console.log" if attempt == 1 else f"testhost-console.{attempt}.log")
            proc = subprocess.Popen(self.argv(workdir, extra=extra), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            result = _collect(proc, log_path, max(1.0, deadline - time.monotonic()), echo)
            if not (result.stalled or result.ended_early):
                return result
            what = (f"stalled (a soft lockup, a hung task, or {SILENT_STALL} s of silence)" if result.stalled
                    else f"ended before the script did ({result.last_words()})")
            print(f"testhost: the emulated test host {what}; {result.where()}; "
                  f"{'retrying' if attempt < STALL_ATTEMPTS else 'giving up'}", file=sys.stderr)
        return result

    def shell(self, workdir: Path) -> int:
        """An interactive shell in the test host on this terminal (Ctrl-A X quits QEMU)."""
        return subprocess.call(self.argv(_check_workdir(workdir), interactive=True))


def compile_checkout() -> None:
    """Byte-compile kvmlite and the nested tests' modules where they lie.
    The test host sees this machine's root read-only and its Pythons write
    no bytecode, so a module whose ``.pyc`` is missing or older than its
    source would be compiled again, under TCG, by every kvmlite process
    started in it (seconds of a VMM's start, which the benchmarks measure).
    An installed kvmlite is compiled by pip; a checkout is compiled here."""
    for directory in (REPO / "kvmlite", REPO / "tests" / "nested"):
        compileall.compile_dir(str(directory), quiet=2)   # a read-only checkout: left as it is


class _Reader:
    """Copies QEMU's output to the log (and ``echo``), noting when READY shows
    and when the last byte came, and killing QEMU when the test host's
    kernel reports a soft lockup or a task hung for two minutes.

    Multi-threaded TCG with nested SVM occasionally freezes the whole test
    host (every emulated CPU "stuck" for minutes, seen about once in a
    dozen boots); that is the emulator's fault, not the test's, so the boot
    is abandoned as soon as the kernel says so and :meth:`TestHost.run`
    tries again."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, echo: TextIO | None) -> None:
        self.chunks: list[bytes] = []
        self.ready_at: float | None = None
        self.last_output = time.monotonic()
        self.stalled = False
        self._proc = proc
        self._tail = b""
        self._recent = b""
        self._thread = threading.Thread(target=self._pump, args=(proc, log, echo), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[bytes], log: Path, echo: TextIO | None) -> None:
        assert proc.stdout is not None
        with log.open("wb") as out:
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):   # type: ignore[attr-defined,union-attr]
                out.write(chunk)
                out.flush()
                self.last_output = time.monotonic()
                self.chunks.append(chunk)
                self._note_ready(chunk)
                self._note_stall(chunk)
                if echo is not None:
                    echo.write(chunk.decode(errors="replace"))
                    echo.flush()

    def _note_ready(self, chunk: bytes) -> None:
        if self.ready_at is None:
            self._tail = (self._tail + chunk)[-4096:]
            if READY.encode() in self._tail:
                self.ready_at = time.monotonic()

    def _note_stall(self, chunk: bytes) -> None:
        self._recent = (self._recent + chunk)[-4096:]     # a report split across reads still counts
        if not self.stalled and (SOFT_LOCKUP in self._recent or HUNG_TASK.search(self._recent)):
            self.stalled = True
            try:
                os.killpg(self._proc.pid, 9)
            except ProcessLookupError:
                pass

    def join(self) -> str:
        self._thread.join(10)
        return b"".join(self.chunks).decode(errors="replace")


def _collect(proc: subprocess.Popen[bytes], log_path: Path, timeout: float, echo: TextIO | None) -> RunResult:
    """Wait for QEMU to end, the deadline, a soft lockup or hung task (the reader kills
    QEMU) or ``SILENT_STALL`` seconds of silence, which a test host that
    froze without a word shows: no section prints nothing for that long."""
    start = time.monotonic()
    deadline = start + timeout
    reader = _Reader(proc, log_path, echo)
    timed_out = False
    while True:
        try:
            proc.wait(max(0.1, min(5.0, deadline - time.monotonic())))
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                timed_out = True
            elif time.monotonic() - reader.last_output > SILENT_STALL:
                reader.stalled = True
            else:
                continue
            os.killpg(proc.pid, 9)
            proc.wait()
            break
    console = reader.join()
    script_rc, sections = parse_console(console)
    boot = reader.ready_at - start if reader.ready_at is not None else None
    return RunResult(console.replace("\r", ""), log_path, proc.returncode, timed_out,
                     time.monotonic() - start, boot, script_rc, sections, stalled=reader.stalled)


def guest_qemu_command(guest: setup.DefaultGuest, command: str, memory_mb: int = 256,
                       timeout: int = 300) -> str:
    """A shell command line, for a test-host script, that boots ``guest`` under
    QEMU with KVM and runs ``command`` in it; QEMU's exit status is
    ``(status << 1) | 1`` through isa-debug-exit at kvmlite's exit port
    (124 from ``timeout`` when the guest hangs)."""
    cmd = base64.b64encode(command.encode()).decode()
    append = f"console=ttyS0 quiet panic=-1 kvmlite.cmd={cmd}"
    argv = ["timeout", str(timeout), QEMU, "-enable-kvm", "-M", "microvm", "-cpu", "host", "-m", str(memory_mb), "-smp", "1",
            "-display", "none", "-serial", "stdio", "-monitor", "none", "-nic", "none", "-no-reboot",
            "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", append,
            "-device", "isa-debug-exit,iobase=0x501,iosize=1"]
    return " ".join(shlex.quote(a) for a in argv)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.nested.testhost", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--shell", action="store_true", help="interactive shell in the test host (Ctrl-A X quits)")
    mode.add_argument("--guest", metavar="CMD", nargs="?", const="uname -a; cat /proc/cmdline",
                      help="boot the default guest under QEMU/KVM in the test host, running CMD")
    mode.add_argument("--kvmlite", metavar="CMD", nargs="?", const="uname -a; cat /proc/cmdline",
                      help="boot the default guest under kvmlite in the test host, running CMD")
    mode.add_argument("-c", dest="command", metavar="CMD", help="run CMD (sh) in the test host")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before the test host is killed")
    parser.add_argument("--workdir", type=Path, help="shared work directory (default: a new temporary one)")
    args = parser.parse_args(argv)
    try:
        host = TestHost.prepare(Progress(enabled=True))
    except TestHostUnavailable as exc:
        print(f"testhost: {exc}", file=sys.stderr)
        return 1
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kvmlite-testhost-"))
    if args.shell:
        return host.shell(workdir)
    if args.guest is not None:
        qemu = guest_qemu_command(host.files.guest, args.guest)
        script = f"echo {shlex.quote('# ' + qemu)}\nsection guest {qemu}"
    elif args.kvmlite is not None:
        guest = host.files.guest
        run = [sys.executable, "-m", "kvmlite", "run", "-k", str(guest.kernel), "-i", str(guest.initrd),
               "-c", "2", "--", args.kvmlite]
        script = (f"export PYTHONPATH={shlex.quote(str(REPO))}\n"
                  f"section kvmlite {' '.join(shlex.quote(a) for a in run)}")
    else:
        script = args.command or "uname -a; ls -l /dev/kvm"
    result = host.run(script, args.timeout, workdir, echo=sys.stdout)
    print(f"\ntesthost: boot {result.boot_seconds or 0:.1f} s, total {result.seconds:.1f} s, "
          f"script rc={result.script_rc}, {result.where()}", file=sys.stderr)
    return 0 if result.script_rc == 0 else 1


if __name__ == "__main__":
    sys.exit(_main())
