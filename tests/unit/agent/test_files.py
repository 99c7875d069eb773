"""File requests through a real agent (threads of this process, Unix socket)
on this host's file system: data both ways, listings, metadata, errors."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from kvmlite.agent.client import AgentClient, FileStream
from kvmlite.agent.errors import (AgentError, SandboxFileExistsError, SandboxFileNotFoundError,
                                  SandboxIsADirectoryError, SandboxNotADirectoryError)
from kvmlite.agent.protocol import CHUNK_SIZE, MAX_PATH


def test_large_file_round_trips_in_chunks(client: AgentClient, workdir: Path) -> None:
    data = os.urandom(20 * 1024 * 1024 + 12345)
    info = client.write(str(workdir / "big.bin"), io.BytesIO(data))
    assert info.size == len(data) and info.type == "file"
    assert hashlib.sha256((workdir / "big.bin").read_bytes()).digest() == \
        hashlib.sha256(data).digest()
    stream = client.read(str(workdir / "big.bin"), format="stream")
    assert isinstance(stream, FileStream) and stream.entry.size == len(data)
    digest, sizes = hashlib.sha256(), []
    with stream:
        for chunk in stream:
            digest.update(chunk)
            sizes.append(len(chunk))
    assert digest.digest() == hashlib.sha256(data).digest()
    assert max(sizes) == CHUNK_SIZE and len(sizes) > 100


def test_text_bytes_and_non_utf8(client: AgentClient, workdir: Path) -> None:
    client.write("note.txt", "héllo\n")             # relative to the agent's workdir
    assert (workdir / "note.txt").read_bytes() == "héllo\n".encode()
    assert client.read(str(workdir / "note.txt")) == "héllo\n"
    client.write(str(workdir / "raw"), b"\xff\x00ok")
    assert client.read(str(workdir / "raw"), format="bytes") == b"\xff\x00ok"
    assert client.read(str(workdir / "raw")) == "\ufffd\x00ok"
    client.write(str(workdir / "empty"), b"")
    assert client.read(str(workdir / "empty"), format="bytes") == b""


def test_write_overwrites_creates_parents_and_takes_a_mode(client: AgentClient,
                                                           workdir: Path) -> None:
    target = workdir / "a" / "b" / "c.sh"
    client.write(str(target), "long content\n", mode=0o750)
    client.write(str(target), io.StringIO("short\n"))
    assert target.read_text() == "short\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o750 & ~_umask()


def test_write_errors_are_typed_and_the_agent_goes_on(client: AgentClient,
                                                      workdir: Path) -> None:
    (workdir / "dir").mkdir()
    (workdir / "file").write_text("x")
    with pytest.raises(SandboxIsADirectoryError):
        client.write(str(workdir / "dir"), os.urandom(3 * CHUNK_SIZE))
    with pytest.raises((SandboxNotADirectoryError, SandboxFileExistsError)):
        client.write(str(workdir / "file" / "below"), "x")
    with pytest.raises(TypeError):
        client.write(str(workdir / "n"), 42)                 # type: ignore[arg-type]
    assert client.write(str(workdir / "ok"), "fine").size == 4


def test_write_error_mid_stream_stops_the_upload(client: AgentClient) -> None:
    # /dev/full fails every write with ENOSPC; the client hears it between chunks.
    with pytest.raises(OSError) as info:
        client.write("/dev/full", bytes(64 * CHUNK_SIZE))
    assert info.value.errno == 28


def test_read_errors_are_typed(client: AgentClient, workdir: Path) -> None:
    with pytest.raises(SandboxFileNotFoundError) as info:
        client.read(str(workdir / "missing"))
    assert isinstance(info.value, FileNotFoundError) and info.value.path == str(workdir / "missing")
    with pytest.raises(SandboxIsADirectoryError):
        client.read(str(workdir))
    with pytest.raises(AgentError, match="regular"):
        client.read("/dev/null")
    with pytest.raises(ValueError):
        client.read(str(workdir), format="blob")             # type: ignore[arg-type]


def test_list_depth_types_and_entries(client: AgentClient, workdir: Path) -> None:
    (workdir / "d" / "e").mkdir(parents=True)
    (workdir / "d" / "e" / "deep").write_text("1")
    (workdir / "f").write_bytes(b"12345")
    (workdir / "link").symlink_to("f")
    top = client.list(str(workdir))
    assert [(e.name, e.type) for e in top] == [("d", "dir"), ("f", "file"), ("link", "symlink")]
    f = top[1]
    assert f.path == str(workdir / "f") and f.size == 5 and f.permissions.startswith("-rw")
    assert f.owner and f.modified_time.timestamp() == pytest.approx(
        (workdir / "f").stat().st_mtime)
    assert top[2].symlink_target == "f"
    assert [e.name for e in client.list(str(workdir), depth=3)] == \
        ["d", "e", "deep", "f", "link"]
    with pytest.raises(SandboxNotADirectoryError):
        client.list(str(workdir / "f"))
    with pytest.raises(ValueError):
        client.list(str(workdir), depth=0)


def test_list_of_many_entries_spans_several_frames(client: AgentClient,
                                                   workdir: Path) -> None:
    for i in range(3000):
        (workdir / f"file-{i:04d}-{'x' * 60}").touch()
    names = [e.name for e in client.list(str(workdir))]
    assert len(names) == 3000 and names == sorted(names)


def test_stat_exists_and_symlinks(client: AgentClient, workdir: Path) -> None:
    (workdir / "f").write_text("abc")
    (workdir / "dangling").symlink_to("nowhere")
    assert client.exists(str(workdir / "f")) and client.exists(str(workdir))
    assert not client.exists(str(workdir / "nope"))
    assert not client.exists(str(workdir / "f" / "under-a-file"))
    assert not client.exists(str(workdir / "dangling"))       # as os.path.exists
    info = client.get_info(str(workdir / "dangling"))
    assert info.type == "symlink" and info.symlink_target == "nowhere"
    assert client.get_info(str(workdir)).type == "dir"
    with pytest.raises(FileNotFoundError):
        client.get_info(str(workdir / "nope"))


def test_make_dir_remove_and_rename(client: AgentClient, workdir: Path) -> None:
    assert client.make_dir(str(workdir / "x" / "y" / "z")) is True
    assert client.make_dir(str(workdir / "x" / "y")) is False
    (workdir / "x" / "y" / "z" / "f").write_text("data")
    (workdir / "plain").write_text("p")
    with pytest.raises(SandboxFileExistsError):
        client.make_dir(str(workdir / "plain"))
    moved = client.rename(str(workdir / "x" / "y" / "z" / "f"), str(workdir / "g"))
    assert moved.name == "g" and (workdir / "g").read_text() == "data"
    client.remove(str(workdir / "x"))                          # a whole tree
    client.remove(str(workdir / "g"))
    assert sorted(os.listdir(workdir)) == ["plain"]
    with pytest.raises(SandboxFileNotFoundError):
        client.remove(str(workdir / "x"))
    with pytest.raises(SandboxFileNotFoundError):
        client.rename(str(workdir / "x"), str(workdir / "y"))


def test_remove_does_not_follow_a_link_to_a_directory(client: AgentClient,
                                                      workdir: Path) -> None:
    (workdir / "keep").mkdir()
    (workdir / "keep" / "precious").write_text("!")
    (workdir / "link").symlink_to("keep")
    client.remove(str(workdir / "link"))
    assert (workdir / "keep" / "precious").exists() and not (workdir / "link").exists()


def test_undecodable_file_names_round_trip(client: AgentClient, workdir: Path) -> None:
    raw = os.fsencode(str(workdir)) + b"/caf\xe9"
    with open(raw, "wb") as f:
        f.write(b"latin-1 name")
    entries = client.list(str(workdir))
    name = next(e.path for e in entries if e.name.startswith("caf"))
    assert os.fsencode(name) == raw
    assert client.read(name, format="bytes") == b"latin-1 name"


def test_path_limits_are_enforced(client: AgentClient) -> None:
    with pytest.raises(AgentError) as info:
        client.get_info("/" + "a" * MAX_PATH)
    assert info.value.name == "bad-args"
    with pytest.raises(AgentError, match="NUL"):
        client.get_info("/tmp/a\0b")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
