"""Check kvmlite's copies of linux/if_tun.h, linux/if.h, linux/sockios.h and
linux/virtio_net.h against the machine's kernel headers.

A C program including the headers prints every constant, size and offset
kvmlite defines; the tests compare them one by one.  Needs gcc and the
kernel headers (Debian: linux-libc-dev).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmlite.net import features, tuntap

HEADERS = ["linux/ioctl.h", "linux/if.h", "linux/if_tun.h", "linux/sockios.h", "linux/in.h", "linux/virtio_net.h"]

TUNTAP_NAMES = [n for n, v in vars(tuntap).items()
                if isinstance(v, int) and n.isupper() and not n.startswith("_")]
FEATURE_BITS = [n for n, v in vars(features).items() if n.startswith("VIRTIO_NET_F_")]
HDR_NAMES = [n for n in vars(features) if n.startswith("VIRTIO_NET_HDR_")]
STRUCTS = {"ifreq": tuntap.ifreq, "ifmap": tuntap.ifmap, "sockaddr_in": tuntap.sockaddr_in,
           "virtio_net_hdr_v1": features.virtio_net_hdr_v1}
OFFSETS = {
    "ifreq": [("ifr_flags", "ifr_ifru"), ("ifr_addr", "ifr_ifru")],
    "virtio_net_hdr_v1": [(f, f) for f, _ in features.virtio_net_hdr_v1._fields_],
}


@pytest.fixture(scope="module")
def header_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (apt-get install gcc)")
    for header in HEADERS:
        if not (Path("/usr/include") / header).exists():
            pytest.skip(f"/usr/include/{header} missing (apt-get install linux-libc-dev)")
    lines = ["#include <stdio.h>", "#include <stddef.h>"] + [f"#include <{h}>" for h in HEADERS]
    lines.append("int main(void) {")
    for name in TUNTAP_NAMES + FEATURE_BITS + HDR_NAMES:
        cname = name.removeprefix("_")
        lines.append(f'#ifdef {cname}\nprintf("{name} %llu\\n", (unsigned long long)({cname}));\n#endif')
    # enum net_device_flags: linux/if.h also defines each as a macro
    for cname, struct in STRUCTS.items():
        lines.append(f'printf("sizeof:{cname} %zu\\n", sizeof(struct {cname}));')
    for cname, fields in OFFSETS.items():
        for cfield, _ in fields:
            lines.append(f'printf("offsetof:{cname}.{cfield} %zu\\n", offsetof(struct {cname}, {cfield}));')
    lines.append("return 0; }")
    tmp = tmp_path_factory.mktemp("net_headers")
    src, exe = tmp / "net.c", tmp / "net"
    src.write_text("\n".join(lines))
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_tuntap_constants_match_kernel_headers(header_values: dict[str, int]) -> None:
    mine = {n: getattr(tuntap, n) for n in TUNTAP_NAMES}
    missing = sorted(n for n in mine if n not in header_values)
    wrong = {n: (hex(v), hex(header_values[n])) for n, v in mine.items()
             if n in header_values and header_values[n] != v}
    assert not wrong, f"constants differing from the headers (ours, header): {wrong}"
    assert missing == [], f"constants not found in {HEADERS}: {missing}"


def test_virtio_net_feature_bits_match_kernel_header(header_values: dict[str, int]) -> None:
    # linux/virtio_net.h gives bit numbers; kvmlite keeps masks.
    for name in FEATURE_BITS:
        assert getattr(features, name) == 1 << header_values[name], name


def test_virtio_net_hdr_constants_match_kernel_header(header_values: dict[str, int]) -> None:
    for name in HDR_NAMES:
        assert getattr(features, name) == header_values[name], name


def test_struct_sizes_match_kernel_headers(header_values: dict[str, int]) -> None:
    for cname, struct in STRUCTS.items():
        assert ctypes.sizeof(struct) == header_values[f"sizeof:{cname}"], cname
    for struct, size in tuntap.EXPECTED_SIZES.items():
        assert ctypes.sizeof(struct) == size
    assert features.VNET_HDR_LEN == header_values["sizeof:virtio_net_hdr_v1"] == 12


def test_struct_field_offsets_match_kernel_headers(header_values: dict[str, int]) -> None:
    for cname, fields in OFFSETS.items():
        for cfield, pyfield in fields:
            assert getattr(STRUCTS[cname], pyfield).offset == header_values[f"offsetof:{cname}.{cfield}"], \
                f"{cname}.{cfield}"


def test_tuntap_check_sizes_with_wrong_expectation_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tuntap.EXPECTED_SIZES, tuntap.ifreq, 32)
    with pytest.raises(AssertionError, match="ifreq"):
        tuntap.check_sizes()


@pytest.mark.parametrize("name", ["", "a" * 16, "has space", "a/b"])
def test_tuntap_make_ifreq_bad_name_is_one_line_error(name: str) -> None:
    with pytest.raises(tuntap.NetError) as info:
        tuntap.make_ifreq(name)
    assert "\n" not in str(info.value) and "interface name" in str(info.value)


def test_tuntap_make_ifreq_keeps_name_and_pattern() -> None:
    assert tuntap.make_ifreq("kvmlite%d").ifr_name == b"kvmlite%d"
    assert tuntap.make_ifreq("a" * 15).ifr_name == b"a" * 15


def test_tuntap_ioctl_failure_names_the_request() -> None:
    with open("/dev/null", "rb") as f, pytest.raises(tuntap.NetError) as info:
        tuntap.tun_get_iff(f.fileno())
    assert info.value.operation == "TUNGETIFF"
    assert str(info.value).startswith("TUNGETIFF failed: ")
    assert info.value.errno is not None
