"""On a PVM-based /dev/kvm a stock Linux kernel runs for minutes and then
stops on an emulation failure; ``kvmlite run`` says so at once (one warning
line naming the nested test host command) and goes on as asked."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmlite.vmm.diagnose import NESTED_COMMAND, is_pvm

REPO = Path(__file__).resolve().parents[2]
WARNING_WITHIN = 1.0       # seconds from process start


@pytest.fixture(scope="module")
def stock_linux() -> tuple[Path, Path]:
    """Debian's cloud kernel and the default guest's initramfs (cached)."""
    from tests.nested.testhost import TestHostUnavailable, prepare_files

    try:
        guest = prepare_files().guest
    except TestHostUnavailable as exc:
        pytest.skip(f"no stock Linux kernel to boot: {exc}")
    return guest.kernel, guest.initrd


def first_stderr_line(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, float]:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(proc.stderr.fileno(), 1)
        if not chunk:
            break
        line += chunk
    return line, time.monotonic()


@pytest.mark.kvm
def test_run_stock_linux_on_pvm_warns_within_a_second(kvm, stock_linux) -> None:
    if not is_pvm():
        pytest.skip("this machine's /dev/kvm is not PVM-based (no /sys/module/kvm_pvm): the warning does not apply")
    kernel, initrd = stock_linux
    # Arrange: Python has compiled kvmlite once, as an installed kvmlite has
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "kvmlite")], check=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.monotonic()
    # Act
    proc = subprocess.Popen([sys.executable, "-m", "kvmlite", "run", "-k", str(kernel), "-i", str(initrd),
                             "-m", "256", "--", "true"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        line, arrived = first_stderr_line(proc, 30)
    finally:
        proc.kill()
        proc.wait()
    # Assert
    text = line.decode(errors="replace").strip()
    assert text.startswith("kvmlite: warning: this machine's /dev/kvm is PVM-based"), text
    assert "6." in text and NESTED_COMMAND in text
    assert arrived - start < WARNING_WITHIN, f"the warning came after {arrived - start:.2f} s"
