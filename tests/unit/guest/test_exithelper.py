"""The generated kvmlite-exit program.

Running it as root here would write to port 0x501 of *this* machine, so the
behavioural tests run it as an unprivileged user, where ``ioperm`` fails;
the write itself is proven by the guest boot tests (QEMU's isa-debug-exit).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from kvmlite.arch.x86.layout import PORT_GUEST_EXIT
from kvmlite.guest import exithelper

NOBODY = 65534


@pytest.fixture()
def helper() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are closed to other users.
    with tempfile.TemporaryDirectory(prefix="kvmlite-exit-") as tmp:
        os.chmod(tmp, 0o755)
        path = Path(tmp) / "kvmlite-exit"
        path.write_bytes(exithelper.build())
        path.chmod(0o755)
        yield path


def _run_unprivileged(helper: Path, *args: str) -> int:
    def drop() -> None:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
    return subprocess.run([str(helper), *args], preexec_fn=drop, timeout=10).returncode


@pytest.mark.parametrize("args", [(), ("",), ("abc",), ("256",), ("-1",), ("1x",)])
def test_helper_bad_argument_exits_2(helper: Path, args: tuple[str, ...]) -> None:
    assert _run_unprivileged(helper, *args) == 2


def test_helper_unprivileged_ioperm_fails_exits_1(helper: Path) -> None:
    assert _run_unprivileged(helper, "7") == 1


def test_helper_port_immediates_match_layout() -> None:
    code = exithelper.machine_code()
    port = PORT_GUEST_EXIT.to_bytes(4, "little")
    assert code.count(b"\xbf" + port) == 1      # mov edi, port  (ioperm's first argument)
    assert code.count(b"\xba" + port) == 1      # mov edx, port  (out dx, al)
    assert b"\xee" in code                       # out dx, al


def test_helper_disassembles_to_expected_instructions() -> None:
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    blob = Path(os.environ.get("TMPDIR", "/tmp")) / f"kvmlite-exit-{os.getpid()}.bin"
    blob.write_bytes(exithelper.machine_code())
    try:
        text = subprocess.run([objdump, "-D", "-b", "binary", "-m", "i386:x86-64", "-M", "intel", str(blob)],
                              capture_output=True, text=True, check=True).stdout
    finally:
        blob.unlink()
    assert "out    dx,al" in text
    assert text.count("syscall") == 2
    assert "mov    eax,0xad" in text       # SYS_ioperm
    assert "mov    eax,0x3c" in text       # SYS_exit
    assert "(bad)" not in text
