"""kvmlite.guest.cpio against the real GNU cpio tool."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from kvmlite.guest.cpio import HEADER_SIZE, CpioWriter, Entry, encode_entry

from .conftest import require_tool


def _sample() -> CpioWriter:
    w = CpioWriter()
    w.add_dir("etc", 0o750)
    w.add_file("etc/hello.txt", b"hello\n", 0o640)
    w.add_file("bin/tool", b"#!/bin/sh\n", 0o755)   # parent bin/ added on demand
    w.add_symlink("bin/link", "tool")
    w.add_chardev("dev/console", 5, 1, 0o600)
    w.add_chardev("dev/null", 1, 3, 0o666)
    return w


def test_encode_entry_lengths_always_multiple_of_4() -> None:
    for n in range(1, 9):
        for size in range(0, 6):
            # Arrange
            entry = Entry("x" * n, stat.S_IFREG | 0o644, b"d" * size)
            # Act
            blob = encode_entry(entry, 1)
            # Assert
            assert len(blob) % 4 == 0
            assert blob.startswith(b"070701")


def test_encode_entry_name_padding_follows_newc_rule() -> None:
    # header (110) + "ab\0" (3) = 113 -> padded to 116, then data at 116
    blob = encode_entry(Entry("ab", stat.S_IFREG | 0o644, b"DATA"), 7)
    assert blob[HEADER_SIZE:HEADER_SIZE + 3] == b"ab\0"
    assert blob[116:120] == b"DATA"
    assert int(blob[6:14], 16) == 7   # c_ino


def test_writer_archive_ends_with_trailer() -> None:
    data = _sample().getvalue()
    assert b"TRAILER!!!\0" in data[-128:]
    assert len(data) % 4 == 0


def test_writer_same_input_same_bytes() -> None:
    assert _sample().getvalue() == _sample().getvalue()


def test_writer_duplicate_path_raises() -> None:
    w = CpioWriter()
    w.add_file("a", b"")
    with pytest.raises(ValueError, match="duplicate"):
        w.add_file("/a", b"")


def test_writer_dotdot_path_raises() -> None:
    with pytest.raises(ValueError, match="bad archive path"):
        CpioWriter().add_file("a/../b", b"")


def test_cpio_tool_lists_members_with_modes_and_devices() -> None:
    # Arrange
    cpio = require_tool("cpio")
    # Act
    listing = subprocess.run([cpio, "-tv", "--quiet"], input=_sample().getvalue(),
                             capture_output=True, check=True).stdout.decode()
    # Assert
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in listing.splitlines()}
    assert set(lines) == {"etc", "etc/hello.txt", "bin", "bin/tool", "bin/link", "dev", "dev/console", "dev/null"}
    assert lines["etc"].startswith("drwxr-x---")
    assert lines["etc/hello.txt"].startswith("-rw-r-----")
    assert lines["bin/tool"].startswith("-rwxr-xr-x")
    assert lines["bin/link"].startswith("lrwxrwxrwx") and lines["bin/link"].endswith("-> tool")
    assert lines["dev/console"].startswith("crw-------") and re.search(r" 5,\s+1 ", lines["dev/console"])
    assert lines["dev/null"].startswith("crw-rw-rw-") and re.search(r" 1,\s+3 ", lines["dev/null"])
    assert all(line.split()[2:4] == ["root", "root"] for line in lines.values())


def test_cpio_tool_extracts_contents(tmp_path: Path) -> None:
    # Arrange
    cpio = require_tool("cpio")
    # Act
    subprocess.run([cpio, "-idm", "--quiet", "--no-absolute-filenames"], input=_sample().getvalue(),
                   cwd=tmp_path, check=True, capture_output=True)
    # Assert
    assert (tmp_path / "etc/hello.txt").read_bytes() == b"hello\n"
    assert stat.S_IMODE((tmp_path / "bin/tool").stat().st_mode) == 0o755
    assert os.readlink(tmp_path / "bin/link") == "tool"
    if os.geteuid() != 0:
        pytest.skip("creating device nodes with cpio -i needs root; files and links were checked")
    console = (tmp_path / "dev/console").lstat()
    assert stat.S_ISCHR(console.st_mode)
    assert (os.major(console.st_rdev), os.minor(console.st_rdev)) == (5, 1)
    null = (tmp_path / "dev/null").lstat()
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
