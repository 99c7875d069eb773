"""kvmlite's copy of linux/vhost.h and linux/vhost_types.h against the
machine's headers, and the VhostNet wrapper without a /dev/vhost-net (the
development machines have none): its missing-device message, and its ioctls
reaching the kernel with the right names."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmlite.net import vhost
from kvmlite.net.errors import NetError
from kvmlite.net.vhost import VhostNet, mem_table

HEADER = Path("/usr/include/linux/vhost.h")
NAMES = [n for n, v in vars(vhost).items() if n.startswith("VHOST_") and isinstance(v, int) and n != "VHOST_NET_PATH"]
OFFSETS = {
    "vhost_vring_addr": ["flags", "desc_user_addr", "used_user_addr", "avail_user_addr", "log_guest_addr"],
    "vhost_memory_region": ["memory_size", "userspace_addr", "flags_padding"],
    "vhost_vring_file": ["fd"],
}


@pytest.fixture(scope="module")
def header_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (apt-get install gcc)")
    if not HEADER.exists():
        pytest.skip(f"{HEADER} missing (apt-get install linux-libc-dev)")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/vhost.h>", "int main(void) {"]
    for name in NAMES:
        lines.append(f'#ifdef {name}\nprintf("{name} %lld\\n", (long long)({name}));\n#endif')
    for struct in vhost.EXPECTED_SIZES:
        lines.append(f'printf("sizeof:{struct.__name__} %zu\\n", sizeof(struct {struct.__name__}));')
    for cname, fields in OFFSETS.items():
        for field in fields:
            lines.append(f'printf("offsetof:{cname}.{field} %zu\\n", offsetof(struct {cname}, {field}));')
    lines.append("return 0; }")
    tmp = tmp_path_factory.mktemp("vhost")
    src, exe = tmp / "vhost.c", tmp / "vhost"
    src.write_text("\n".join(lines))
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_vhost_constants_match_kernel_header(header_values: dict[str, int]) -> None:
    missing = sorted(n for n in NAMES if n not in header_values)
    wrong = {n: (getattr(vhost, n), header_values[n]) for n in NAMES
             if n in header_values and header_values[n] != getattr(vhost, n)}
    assert not wrong, f"differing from linux/vhost.h (ours, header): {wrong}"
    assert missing == []


def test_vhost_struct_sizes_and_offsets_match_kernel_header(header_values: dict[str, int]) -> None:
    for struct, size in vhost.EXPECTED_SIZES.items():
        assert ctypes.sizeof(struct) == size == header_values[f"sizeof:{struct.__name__}"], struct.__name__
    for cname, fields in OFFSETS.items():
        for field in fields:
            assert getattr(getattr(vhost, cname), field).offset == header_values[f"offsetof:{cname}.{field}"]


def test_vhost_mem_table_layout() -> None:
    buf = mem_table([(0, 0x8000_0000, 0x7F00_0000_0000), (0x1_0000_0000, 0x4000_0000, 0x7F80_0000_0000)])
    raw = bytes(buf)
    assert len(raw) == 8 + 2 * 32
    assert raw[:8] == (2).to_bytes(4, "little") + bytes(4)
    assert raw[8:40] == b"".join(v.to_bytes(8, "little") for v in (0, 0x8000_0000, 0x7F00_0000_0000, 0))
    assert raw[40:72] == b"".join(v.to_bytes(8, "little") for v in (0x1_0000_0000, 0x4000_0000, 0x7F80_0000_0000, 0))


def test_vhost_missing_device_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(NetError) as info:
        VhostNet(str(tmp_path / "vhost-net"))
    assert str(info.value) == (f"vhost-net is not available: {tmp_path / 'vhost-net'} does not exist "
                               "(modprobe vhost_net)")


def test_vhost_default_path_message_when_absent() -> None:
    if Path(vhost.VHOST_NET_PATH).exists():
        pytest.skip("this machine has /dev/vhost-net")
    with pytest.raises(NetError, match=r"^vhost-net is not available: /dev/vhost-net does not exist "
                                       r"\(modprobe vhost_net\)$"):
        VhostNet()


def test_vhost_ioctl_failure_names_the_ioctl() -> None:
    # /dev/null takes no vhost ioctl: each call reaches the kernel and says which it was.
    dev = VhostNet("/dev/null")
    try:
        with pytest.raises(NetError, match=r"^VHOST_SET_OWNER failed: .*\(ENOTTY\)$"):
            dev.set_owner()
        with pytest.raises(NetError, match="^VHOST_SET_MEM_TABLE failed"):
            dev.set_mem_table([(0, 4096, 0x1000)])
        with pytest.raises(NetError, match="^VHOST_NET_SET_BACKEND failed"):
            dev.set_backend(0, vhost.VHOST_FILE_UNBIND)
    finally:
        dev.close()
        dev.close()
