"""virtio-9p shares with a real Linux guest: the 9p-capable default guest
(``default_guest(shares=True)``: Debian's generic kernel) under kvmlite.

One test-host boot runs two VMs:

* ``files``: three shares on a tmpfs of the test host (``--9p
  DIR,TAG[,ro]``): a writable one, a read-only one, and a read-only one
  holding the guest's probe script (too long for the kernel command
  line).  The guest's init
  mounts them at /mnt/TAG (msize 512000, kvmlite.9p=); the guest creates,
  writes, reads, renames, hard-links, symlinks, chmods and unlinks files
  and writes 1 MiB in large requests, and the script checks each result
  from the test host's side.  The read-only share refuses every write
  (EROFS), and symlinks planted on the host that point outside the share
  (absolute, relative, to a file and to a directory) come back as
  symlinks the guest resolves in its own namespace: neither reading nor
  writing through them reaches the host's file outside.
* ``root``: a busybox tree shared read-only as the root
  (``root=TAG rootfstype=9p kvmlite.overlay=1``): the init switch_roots
  into it, writes stay in the VM's tmpfs overlay, the other share is
  beneath the root at /mnt/TAG, and the command's status is kvmlite's.
"""

from __future__ import annotations

import re
import shlex

import pytest

from kvmlite.guest.setup import DefaultGuest

from .linux import hardware_kvm, run_linux_script
from .testhost import RunResult, TestHost

pytestmark = pytest.mark.nested
TIMEOUT = 1500
S = "/tmp/kvmlite-9p"        # a tmpfs in the test host (fresh at each boot)
BIG = 1 << 20
ROOT_STATUS = 7

# Runs in the guest (busybox, the initramfs is the root) from the tools
# share; each line is "G <name> <value>" for the test to compare.  Its
# stdin is the console, so nothing may ask (busybox rm asks before
# removing a file it cannot write unless -f, as on a read-only share).
GUEST_FILES = f"""
exec </dev/null
cd /mnt/rw9p || exit 90
g() {{ echo "G $*"; }}
g msize "$(grep ' /mnt/rw9p ' /proc/mounts | grep -o 'msize=[0-9]*')"
echo created > new.txt && g read "$(cat new.txt)"
mv new.txt renamed.txt && g renamed ok
ln renamed.txt hard.txt && g links "$(stat -c %h renamed.txt)"
ln -s renamed.txt sym.txt && g readlink "$(readlink sym.txt)"
chmod 0640 renamed.txt && g mode "$(stat -c %a renamed.txt)"
echo doomed > doomed.txt && rm doomed.txt && g unlinked "$(ls doomed.txt 2>/dev/null || echo gone)"
mkdir -p sub/deeper && echo nested > sub/deeper/f && g nested "$(cat sub/deeper/f)"
head -c {BIG} /dev/urandom > big.bin && g bigmd5 "$(md5sum big.bin | cut -d' ' -f1)"
g bigsize "$(stat -c %s big.bin)"
g existing "$(cat existing.txt)"
g ro_read "$(cat /mnt/ro9p/file)"
{{ echo x > /mnt/ro9p/new; }} 2>/dev/null && g ro_create WRITTEN || g ro_create refused
{{ echo x >> /mnt/ro9p/file; }} 2>/dev/null && g ro_append WRITTEN || g ro_append refused
rm -f /mnt/ro9p/file 2>/dev/null && g ro_unlink WRITTEN || g ro_unlink refused
mkdir /mnt/ro9p/d 2>/dev/null && g ro_mkdir WRITTEN || g ro_mkdir refused
for l in esc-abs esc-rel escdir-abs escdir-rel; do g "link_$l" "$(readlink $l)"; done
for p in esc-abs esc-rel escdir-abs/secret escdir-rel/secret; do
    cat "$p" 2>/dev/null | grep -q host-secret && g "read_$p" LEAKED || g "read_$p" contained
    {{ echo pwned > "$p"; }} 2>/dev/null
done
sync
exit 0
"""

GUEST_ROOT = f"""
cat /etc/marker; echo in-the-vm > /etc/written && cat /etc/written
test -e /init && echo INITRAMFS-STILL-THERE
grep -q '^overlay / overlay' /proc/mounts && echo root-is-overlay
cat /mnt/rw9p/renamed.txt
exit {ROOT_STATUS}
"""


def _script(guest: DefaultGuest) -> str:
    k, i = shlex.quote(str(guest.kernel)), shlex.quote(str(guest.initrd))
    run = f"kvmlite run -k {k} -i {i} -n mode=none"
    return f"""
export S={S}
mkdir -p $S/rw $S/ro $S/outside $S/root $S/tools
cat > $S/tools/probe.sh <<'PROBE_EOF'
{GUEST_FILES}
PROBE_EOF
echo host-secret > $S/outside/secret
mkdir -p $S/outside/secret.d
echo original > $S/rw/existing.txt
echo read-only-content > $S/ro/file
ln -s $S/outside/secret $S/rw/esc-abs
ln -s ../outside/secret $S/rw/esc-rel
ln -s $S/outside $S/rw/escdir-abs
ln -s ../outside $S/rw/escdir-rel
section files {run} --9p $S/rw,rw9p --9p $S/ro,ro9p,ro --9p $S/tools,tools,ro -- sh /mnt/tools/probe.sh
section host sh -c '
    cd $S/rw
    echo "H renamed $(cat renamed.txt 2>&1)"
    echo "H old_name $(ls new.txt 2>/dev/null || echo gone)"
    echo "H links $(stat -c %h renamed.txt) same_inode $([ $(stat -c %i renamed.txt) = $(stat -c %i hard.txt) ] && echo yes)"
    echo "H symlink $(readlink sym.txt)"
    echo "H mode $(stat -c %a renamed.txt)"
    echo "H doomed $(ls doomed.txt 2>/dev/null || echo gone)"
    echo "H nested $(cat sub/deeper/f)"
    echo "H bigmd5 $(md5sum big.bin | cut -d" " -f1)"
    echo "H ro_entries $(ls $S/ro | tr "\\n" " ")"
    echo "H ro_file $(cat $S/ro/file)"
    echo "H secret $(cat $S/outside/secret)"
    echo "H outside $(ls $S/outside | tr "\\n" " ")"
'
cp /bin/busybox $S/root/busybox.tmp 2>/dev/null || cp "$(command -v busybox)" $S/root/busybox.tmp
mkdir -p $S/root/bin $S/root/etc $S/root/run $S/root/dev $S/root/proc $S/root/sys $S/root/mnt
mv $S/root/busybox.tmp $S/root/bin/busybox
for a in sh cat echo grep test; do ln -s busybox $S/root/bin/$a; done
echo inside-the-9p-root > $S/root/etc/marker
section root {run} --9p $S/root,hostfs,ro --9p $S/rw,rw9p -p "root=hostfs rootfstype=9p kvmlite.overlay=1" -- \\
    {shlex.quote(GUEST_ROOT)}
section root_after sh -c 'ls $S/root/etc'
"""


def _values(text: str, prefix: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        match = re.match(rf"^{prefix} (\S+) ?(.*)$", line.strip())
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, share_guest: DefaultGuest,
         tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    host: TestHost | None = None if hardware_kvm() else request.getfixturevalue("testhost")
    result = run_linux_script(host, _script(share_guest), TIMEOUT, tmp_path_factory.mktemp("ninep"))
    assert not result.timed_out, f"timed out after {TIMEOUT} s; {result.where()}"
    return result


@pytest.fixture(scope="module")
def guest_values(runs: RunResult) -> dict[str, str]:
    rc, out = runs.section("files")
    assert rc == 0, f"rc={rc} {out[-3000:]}; {runs.where()}"
    return _values(out, "G")


@pytest.fixture(scope="module")
def host_values(runs: RunResult) -> dict[str, str]:
    return _values(runs.section("host").output, "H")


def test_9p_share_mounted_with_large_msize(guest_values: dict[str, str]) -> None:
    assert guest_values.get("msize") == "msize=512000", guest_values


def test_9p_create_write_read_rename_seen_from_host(guest_values: dict[str, str], host_values: dict[str, str]) -> None:
    assert guest_values["read"] == "created" and guest_values["renamed"] == "ok"
    assert host_values["renamed"] == "created" and host_values["old_name"] == "gone"
    assert guest_values["existing"] == "original"
    assert host_values["nested"] == "nested" == guest_values["nested"]


def test_9p_hard_link_symlink_chmod_unlink_seen_from_host(guest_values: dict[str, str],
                                                          host_values: dict[str, str]) -> None:
    assert guest_values["links"] == "2" and host_values["links"] == "2 same_inode yes"
    assert guest_values["readlink"] == "renamed.txt" == host_values["symlink"]
    assert guest_values["mode"] == "640" == host_values["mode"]
    assert guest_values["unlinked"] == "gone" == host_values["doomed"]


def test_9p_one_mib_written_in_large_requests_intact(guest_values: dict[str, str], host_values: dict[str, str]) -> None:
    assert guest_values["bigsize"] == str(BIG)
    assert guest_values["bigmd5"] == host_values["bigmd5"] and len(host_values["bigmd5"]) == 32


def test_9p_read_only_share_refuses_writes(guest_values: dict[str, str], host_values: dict[str, str]) -> None:
    assert guest_values["ro_read"] == "read-only-content"
    for op in ("ro_create", "ro_append", "ro_unlink", "ro_mkdir"):
        assert guest_values[op] == "refused", op
    assert host_values["ro_entries"] == "file" and host_values["ro_file"] == "read-only-content"


def test_9p_symlinks_out_of_share_not_followed_out(guest_values: dict[str, str], host_values: dict[str, str]) -> None:
    # The symlinks come back as symlinks (their text, unresolved by the VMM) ...
    assert guest_values["link_esc-abs"] == f"{S}/outside/secret"
    assert guest_values["link_esc-rel"] == "../outside/secret"
    assert guest_values["link_escdir-abs"] == f"{S}/outside"
    # ... and neither reading nor writing through them reaches the host's files outside
    for path in ("esc-abs", "esc-rel", "escdir-abs/secret", "escdir-rel/secret"):
        assert guest_values[f"read_{path}"] == "contained", path
    assert host_values["secret"] == "host-secret"
    assert host_values["outside"] == "secret secret.d"


def test_9p_root_overlay_switch_root_status_writes_stay_in_vm(runs: RunResult) -> None:
    rc, out = runs.section("root")
    assert rc == ROOT_STATUS, f"rc={rc} {out[-3000:]}; {runs.where()}"
    for line in ("inside-the-9p-root", "in-the-vm", "root-is-overlay", "created"):
        assert line in out, f"{line!r} missing: {out[-3000:]}; {runs.where()}"
    assert "INITRAMFS-STILL-THERE" not in out
    assert runs.section("root_after").output.split() == ["marker"]
