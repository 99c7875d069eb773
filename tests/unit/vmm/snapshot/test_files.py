"""kvmlite.vmm.snapshot.files: the snapshot directory's format, and the
refusal of every damaged or foreign snapshot in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kvmlite.vmm.config import DiskConfig, NetConfig, ShareConfig, VmConfig, VsockConfig
from kvmlite.vmm.snapshot import files
from kvmlite.vmm.snapshot.files import SnapshotError


def make_snapshot(directory: Path, state: dict | None = None, memory: bytes = b"\x01" * 8192) -> Path:
    files.prepare_directory(directory)
    fd, tmp = files.open_memory_for_writing(directory)
    os.write(fd, memory)
    os.close(fd)
    files.write_state(directory, state or {"config": {}, "vcpus": []}, tmp, len(memory))
    return directory


def test_snapshot_round_trips_state_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    state = {"config": {"a": 1}, "vcpus": [{"regs": "AAAA"}], "devices": {"com1": {"ier": 3}}}
    make_snapshot(tmp_path / "s", state)
    header, loaded = files.read_state(tmp_path / "s")
    assert loaded == state
    assert header["format"] == files.FORMAT and header["memory_bytes"] == 8192
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["memory", "state"]


def test_prepare_directory_refuses_a_non_empty_directory_and_a_file(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep")
    with pytest.raises(SnapshotError, match="not empty"):
        files.prepare_directory(tmp_path)
    with pytest.raises(SnapshotError, match="not a directory"):
        files.prepare_directory(tmp_path / "x")
    assert (tmp_path / "x").read_text() == "keep"


def _damage(path: Path, how: str) -> None:
    state = path / "state"
    header, _, body = state.read_bytes().partition(b"\n")
    if how == "flip-body":
        body = body[:-3] + bytes([body[-3] ^ 1]) + body[-2:]
    elif how == "truncate-state":
        body = body[:len(body) // 2]
    elif how == "format":
        h = json.loads(header)
        h["format"] = 2
        header = json.dumps(h).encode()
    elif how == "magic":
        header = b'{"magic": "something-else"}'
    elif how == "header-garbage":
        header = b"\xff\xfe garbage"
    elif how == "bad-size-type":
        h = json.loads(header)
        h["state_bytes"] = "many"
        header = json.dumps(h).encode()
    elif how == "truncate-memory":
        os.truncate(path / "memory", 4096)
    elif how == "no-memory":
        (path / "memory").unlink()
    elif how == "no-state":
        state.unlink()
        return
    state.write_bytes(header + b"\n" + body)


@pytest.mark.parametrize("how, message", [
    ("flip-body", "checksum does not match"),
    ("truncate-state", "truncated or corrupt"),
    ("format", "snapshot format 2"),
    ("magic", "not a kvmlite snapshot state file"),
    ("header-garbage", "not a kvmlite snapshot state file"),
    ("bad-size-type", "state_bytes is str"),
    ("truncate-memory", "memory file is 4096 bytes, expected 8192"),
    ("no-memory", "no memory file"),
    ("no-state", "not a kvmlite snapshot directory"),
])
def test_read_state_refuses_damage_in_one_line(tmp_path: Path, how: str, message: str) -> None:
    path = make_snapshot(tmp_path / "s")
    _damage(path, how)
    with pytest.raises(SnapshotError, match=message) as info:
        files.read_state(path)
    assert "\n" not in str(info.value)


def test_config_round_trips_every_kind_of_option(tmp_path: Path) -> None:
    config = VmConfig(kernel="/k", initrd="/i", params="quiet", mem_mib=128, cpus=2, name="vm1",
                      disks=(DiskConfig("/d.img", True),), rng=True, virtio_transport="mmio",
                      nics=(NetConfig(mode="user", hostfwd=("tcp:8080-80",)),),
                      shares=(ShareConfig(str(tmp_path), "t", True, view_top=("usr",), view_hidden=("etc",)),),
                      vsock=VsockConfig(7), timeout=30.0, labels=(("k", "v"),))
    again = files.config_from_dict(json.loads(json.dumps(files.config_to_dict(config))))
    assert again == config


def test_config_from_dict_bad_values_are_snapshot_errors() -> None:
    good = files.config_to_dict(VmConfig(kernel="/k"))
    with pytest.raises(SnapshotError, match="snapshot config"):
        files.config_from_dict({**good, "cpus": 0})
    with pytest.raises(SnapshotError, match="snapshot config"):
        files.config_from_dict({**good, "surprise": 1})
    with pytest.raises(SnapshotError, match="lacks 'disks'"):
        files.config_from_dict({k: v for k, v in good.items() if k != "disks"})
