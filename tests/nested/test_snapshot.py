"""Snapshot and restore of real Linux (one test-host boot, docs/snapshot.md).

Inside the nested test host, ``kvmlite run`` boots the default guest that
mounts shares (Debian's generic kernel, which has the vmgenid driver;
``-n mode=none``: no NIC) with its console on a FIFO; a shell loop in the
guest prints ``count N`` five times a second.  ``kvmlite snapshot`` saves
it while it counts; the original goes on; two clones are started from the
snapshot with ``kvmlite run --restore`` and each is typed a command on its
console.  Each clone's loop must go on from the saved count (no reboot, no
restart of the loop), each typed command must run in its own clone only,
their /dev/urandom must differ (the VM generation ID), and the original
must keep counting.
"""

from __future__ import annotations

import re
import shlex
import sys

import pytest

from kvmlite.guest.initscript import READY_MARKER
from kvmlite.guest.setup import DefaultGuest

from .testhost import GUEST_CRASH as ENVIRONMENT_CRASH, REPO, RunResult, TestHost

BOOT_TIMEOUT = 1500          # TCG: the test host, then Linux under kvmlite inside it, three times
GUEST_READY_S = 300
COUNT = re.compile(r"count (\d+)$", re.M)     # a prompt may precede it on its line
LOOP = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo count $i; sleep 0.2; done &"


def script(guest: DefaultGuest) -> str:
    py = f"env PYTHONPATH={shlex.quote(str(REPO))} XDG_RUNTIME_DIR=/tmp/xdg {shlex.quote(sys.executable)}"
    kl = f"{py} -m kvmlite"
    boot = f"{kl} run -k {shlex.quote(str(guest.kernel))} -i {shlex.quote(str(guest.initrd))} -n mode=none --name lin"
    return f"""
mkdir -p /tmp/xdg && chmod 700 /tmp/xdg
mkfifo /tmp/in0 /tmp/in1 /tmp/in2
{boot} < /tmp/in0 > /tmp/run0.log 2>&1 &
exec 3>/tmp/in0
wait_for() {{  # FILE TEXT SECONDS
    n=0
    while ! grep -q "$2" "$1"; do n=$((n + 1)); [ $n -gt $(($3 * 2)) ] && return 1; sleep 0.5; done
}}
wait_for /tmp/run0.log {shlex.quote(READY_MARKER)} {GUEST_READY_S}
sleep 2
echo 'echo vmgenid-bound=$(ls /sys/bus/acpi/drivers/vmgenid 2>/dev/null | grep -c :)' >&3
echo {shlex.quote(LOOP)} >&3
wait_for /tmp/run0.log 'count 10' 120
section snapshot {kl} snapshot -n lin /tmp/snap
sleep 1
{kl} run --restore /tmp/snap --name c1 < /tmp/in1 > /tmp/run1.log 2>&1 &
exec 4>/tmp/in1
{kl} run --restore /tmp/snap --name c2 < /tmp/in2 > /tmp/run2.log 2>&1 &
exec 5>/tmp/in2
wait_for /tmp/run1.log 'count' 120
wait_for /tmp/run2.log 'count' 120
echo 'echo marker-c1-$((6*7)) rnd=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n")' >&4
echo 'echo marker-c2-$((7*8)) rnd=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n")' >&5
wait_for /tmp/run1.log 'marker-c1-42' 60
wait_for /tmp/run2.log 'marker-c2-56' 60
sleep 3
section list {kl} list
section du du -k --apparent-size /tmp/snap/memory
section du-real du -k /tmp/snap/memory
{kl} stop -n c1 --force > /dev/null 2>&1
{kl} stop -n c2 --force > /dev/null 2>&1
{kl} stop -n lin --force > /dev/null 2>&1
sleep 3
section run0 cat /tmp/run0.log
section run1 cat /tmp/run1.log
section run2 cat /tmp/run2.log
"""


@pytest.fixture(scope="module")
def snap(testhost: TestHost, share_guest: DefaultGuest, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    # The share-capable default guest: Debian's generic kernel has the vmgenid
    # driver (CONFIG_VMGENID); the cloud kernel of the plain default guest does not.
    result = testhost.run(script(share_guest), BOOT_TIMEOUT, tmp_path_factory.mktemp("snapshot"))
    assert not result.timed_out, f"test host timed out after {BOOT_TIMEOUT} s; {result.where()}"
    return result


# The emulated test host (QEMU TCG, nested SVM) now and then crashes an inner
# guest with a triple fault (BENCHMARKS.md, "Nested instability"); seen once
# here in a clone whose twin, restored from the same snapshot, ran on.  Such
# a clone is an expected failure naming the VMM's line; anything else fails.


def clone_output(snap: RunResult, clone: str) -> str:
    out = snap.section(clone).output
    crash = next((line for line in out.splitlines() if ENVIRONMENT_CRASH in line), None)
    if crash is not None:
        pytest.xfail(f"{clone}: the guest crashed under the emulated test host: {crash.strip()}; {snap.where()}")
    return out


def counts(text: str) -> list[int]:
    return [int(n) for n in COUNT.findall(text.replace("\r", ""))]


@pytest.mark.nested
def test_snapshot_of_a_counting_linux_guest_succeeds(snap: RunResult) -> None:
    rc, out = snap.section("snapshot")
    assert rc == 0 and "lin: saved to /tmp/snap" in out and "running" in out, f"{out}; {snap.where()}"
    assert counts(snap.section("run0").output), f"the loop never counted; {snap.where()}"


@pytest.mark.nested
@pytest.mark.parametrize("clone", ["run1", "run2"])
def test_each_clone_counts_on_from_the_saved_count(snap: RunResult, clone: str) -> None:
    out = clone_output(snap, clone)
    got = counts(out)
    assert got, f"{clone}: no count after the restore; {snap.where()}"
    assert READY_MARKER not in out, f"{clone}: the guest booted again instead of going on; {snap.where()}"
    assert got[0] > 10, f"{clone}: the loop started over ({got[:3]}); {snap.where()}"
    assert got == list(range(got[0], got[0] + len(got))), f"{clone}: counts skipped {got[:20]}; {snap.where()}"


@pytest.mark.nested
def test_clones_run_typed_commands_each_in_its_own_guest(snap: RunResult) -> None:
    one, two = clone_output(snap, "run1"), clone_output(snap, "run2")
    assert "marker-c1-42" in one and "marker-c2-56" in two, snap.where()
    assert "marker-c2" not in one and "marker-c1" not in two, snap.where()


RND = re.compile(r"marker-c[12]-\d+ rnd=([0-9a-f]{32})")


@pytest.mark.nested
def test_clones_random_numbers_differ(snap: RunResult) -> None:
    """The guest's vmgenid driver (bound to \\_SB.VGEN) reseeds its RNG on the
    restore's new generation ID, so two clones of one snapshot differ."""
    bound = re.search(r"vmgenid-bound=(\d+)", snap.section("run0").output)
    assert bound and int(bound.group(1)) >= 1, f"the guest's vmgenid driver is not bound to VGEN; {snap.where()}"
    one, two = (RND.search(clone_output(snap, c)) for c in ("run1", "run2"))
    assert one and two, snap.where()
    assert one.group(1) != two.group(1), f"both clones read {one.group(1)} from /dev/urandom; {snap.where()}"


@pytest.mark.nested
def test_original_keeps_counting_after_the_snapshot(snap: RunResult) -> None:
    got = counts(snap.section("run0").output)
    clone = counts(clone_output(snap, "run1"))
    assert clone and max(got) > clone[0] + 5, f"the original stopped at {max(got)}; {snap.where()}"
    clone_output(snap, "run2")          # a crashed c2 is not listed: the same expected failure as above
    rc, listing = snap.section("list")
    assert all(name in listing for name in ("lin", "c1", "c2")), f"{listing}; {snap.where()}"


@pytest.mark.nested
def test_memory_file_is_sparse(snap: RunResult) -> None:
    apparent = int(snap.section("du").output.split()[0])
    real = int(snap.section("du-real").output.split()[0])
    assert apparent == 256 * 1024 and real < apparent, (apparent, real, snap.where())
