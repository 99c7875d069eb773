"""Virtio devices with a real Linux guest (issue: virtio devices).

One test-host boot runs several kvmlite guests: with ``--virtio-transport
pci`` and again with ``mmio`` the guest mounts an ext4 image from
virtio-blk, writes a file and syncs; after kvmlite exits the test reads the
file out of the image with debugfs.  hvc0 carries a shell's output and
takes its input; /dev/hwrng gives bytes; a ``ro`` disk refuses writes; the
driver is unbound and bound again (device reset) and the disk still reads.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .linux import hardware_kvm, run_linux_script
from .testhost import RunResult, TestHost

pytestmark = pytest.mark.nested
TIMEOUT = 1500

WRITE = ("mount /dev/vda /mnt && echo written-over-{t} > /mnt/{t}.txt && sync && umount /mnt && echo wrote-{t}; "
         "head -c 32 /dev/hwrng | od -An -tx1 | tr -d \" \\n\"; echo; "
         "ls /sys/bus/virtio/devices | wc -l")
RELOAD = ("d=$(basename $(dirname $(readlink -f /sys/block/vda/device))); echo dev=$d; "
          "echo $d > /sys/bus/pci/drivers/virtio-pci/unbind; "
          "test -e /sys/block/vda && echo still-there || echo unbound; "
          "echo $d > /sys/bus/pci/drivers/virtio-pci/bind; sleep 1; "
          "mount -o ro /dev/vda /mnt && cat /mnt/pci.txt && umount /mnt")


def _script(work: Path) -> str:
    pci, mmio, ro = (work / n for n in ("pci.img", "mmio.img", "ro.img"))
    return f"""
retried_section pci kvmlite run -k "$KERNEL" -i "$INITRD" -p quiet -d {pci} --rng -- '{WRITE.format(t="pci")}'
retried_section reload kvmlite run -k "$KERNEL" -i "$INITRD" -p quiet -d {pci} -- '{RELOAD}'
retried_section mmio kvmlite run -k "$KERNEL" -i "$INITRD" -p quiet -d {mmio} --rng --virtio-transport mmio -- '{WRITE.format(t="mmio")}'
retried_section ro kvmlite run -k "$KERNEL" -i "$INITRD" -p quiet -d {ro},ro -- \\
    'cat /sys/block/vda/ro; mount /dev/vda /mnt; echo x > /mnt/new.txt && echo WROTE || echo REFUSED; dd if=/dev/zero of=/dev/vda bs=4k count=1 2>/dev/null && echo RAW-WROTE || echo RAW-REFUSED'
retried_section hvc $INTERACT --expect "# " --send 'echo HVC-$((6*7))' --expect HVC-42 --send 'exit 9' -- \
    $KVMLITE run -k "$KERNEL" -i "$INITRD" -p quiet --console virtio
"""


def _mkfs(path: Path) -> None:
    subprocess.run(["truncate", "-s", "64M", str(path)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True, capture_output=True)


def _debugfs_cat(image: Path, name: str) -> str:
    proc = subprocess.run(["debugfs", "-R", f"cat /{name}", str(image)], capture_output=True, text=True)
    return proc.stdout


@pytest.fixture(scope="module")
def virtio(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Path]:
    if shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None:
        pytest.skip("mkfs.ext4/debugfs missing (apt-get install e2fsprogs)")
    host: TestHost | None = None if hardware_kvm() else request.getfixturevalue("testhost")
    work = tmp_path_factory.mktemp("virtio")
    for name in ("pci.img", "mmio.img", "ro.img"):
        _mkfs(work / name)
    result = run_linux_script(host, _script(work), TIMEOUT, work)
    assert not result.timed_out, f"timed out after {TIMEOUT} s; {result.where()}"
    return result, work


@pytest.mark.parametrize("transport", ["pci", "mmio"])
def test_virtio_blk_ext4_write_reaches_image(virtio: tuple[RunResult, Path], transport: str) -> None:
    result, work = virtio
    rc, out = result.section(transport)
    assert rc == 0 and f"wrote-{transport}" in out, f"{out[-2000:]}; {result.where()}"
    assert _debugfs_cat(work / f"{transport}.img", f"{transport}.txt").strip() == f"written-over-{transport}"


@pytest.mark.parametrize("transport", ["pci", "mmio"])
def test_virtio_rng_hwrng_gives_bytes(virtio: tuple[RunResult, Path], transport: str) -> None:
    result, _ = virtio
    lines = result.section(transport).output.splitlines()
    hexes = [l.strip() for l in lines if len(l.strip()) == 64 and all(c in "0123456789abcdef" for c in l.strip())]
    assert hexes, f"no 32 random bytes from /dev/hwrng; {result.where()}"
    assert len(set(bytes.fromhex(hexes[0]))) > 8, hexes[0]
    assert lines[-1].strip() == "2", "two virtio devices (blk, rng) expected"


def test_virtio_blk_driver_rebind_after_reset_still_reads(virtio: tuple[RunResult, Path]) -> None:
    result, _ = virtio
    rc, out = result.section("reload")
    assert "unbound" in out, f"unbind did not remove vda: {out[-1500:]}; {result.where()}"
    assert "written-over-pci" in out and rc == 0, f"{out[-1500:]}; {result.where()}"


def test_virtio_blk_read_only_disk_refuses_writes(virtio: tuple[RunResult, Path]) -> None:
    result, work = virtio
    rc, out = result.section("ro")
    lines = out.splitlines()
    assert "1" in lines and "REFUSED" in out and "RAW-REFUSED" in out, f"{out[-1500:]}; {result.where()}"
    assert "WROTE" not in out.replace("RAW-", "")
    assert _debugfs_cat(work / "ro.img", "new.txt") == ""


def test_virtio_console_hvc0_carries_shell(virtio: tuple[RunResult, Path]) -> None:
    result, _ = virtio
    rc, out = result.section("hvc")
    assert "HVC-42" in out, f"{out[-1500:]}; {result.where()}"
    assert rc == 9, f"the shell's exit status must be kvmlite's: rc={rc}; {result.where()}"
