"""Where real-Linux tests run: directly, on a machine whose /dev/kvm is
hardware KVM, or else inside the nested test host (testhost.py).

Both take the same batched shell script (``section NAME cmd...``) and give
the same :class:`~tests.nested.testhost.RunResult`, so a test is written
once.  ``kvmlite`` in a script is kvmlite's CLI run from this checkout with
this Python; ``$KERNEL`` and ``$INITRD`` are the default guest's Debian
cloud kernel and initramfs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from kvmlite.vmm.diagnose import is_pvm

from .testhost import REPO, SCRIPT_PREAMBLE, RunResult, TestHost, parse_console


def script_env(kernel: Path, initrd: Path) -> str:
    """Shell lines defining ``kvmlite`` (a function), ``$KVMLITE`` (the same
    as a command line), ``$INTERACT`` (tests/nested/interact.py), ``$KERNEL``
    and ``$INITRD``."""
    py = shlex.quote(sys.executable)
    return (f"export PYTHONPATH={shlex.quote(str(REPO))} PYTHONDONTWRITEBYTECODE=1\n"
            f"KERNEL={shlex.quote(str(kernel))}\nINITRD={shlex.quote(str(initrd))}\n"
            f"KVMLITE=\"{py} -m kvmlite\"\n"
            f"INTERACT=\"{py} {shlex.quote(str(REPO / 'tests' / 'nested' / 'interact.py'))}\"\n"
            f"kvmlite() {{ {py} -m kvmlite \"$@\"; }}\n")


def hardware_kvm() -> bool:
    """True when this machine's own /dev/kvm can run a stock Linux kernel."""
    return os.access("/dev/kvm", os.R_OK | os.W_OK) and not is_pvm()


def run_linux_script(host: TestHost | None, script: str, timeout: float, workdir: Path) -> RunResult:
    """Run ``script`` where a real Linux guest can boot (see module doc)."""
    guest = host.files.guest if host is not None else None
    if guest is None:
        from kvmlite.guest.setup import default_guest

        guest = default_guest()
        assert guest is not None, "no default guest: run 'kvmlite setup'"
    body = script_env(guest.kernel, guest.initrd) + script
    if host is not None:
        return host.run(body, timeout, workdir)
    return _run_here(body, timeout, workdir)


def _run_here(body: str, timeout: float, workdir: Path) -> RunResult:
    path = workdir / "script.sh"
    path.write_text(SCRIPT_PREAMBLE + body + "\n")
    log_path = workdir / "console.log"
    start = time.monotonic()
    env = dict(os.environ, TESTHOST_WORK=str(workdir))
    try:
        proc = subprocess.run(["/bin/sh", str(path)], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, env=env)
        out, rc, timed_out = proc.stdout.decode(errors="replace"), proc.returncode, False
    except subprocess.TimeoutExpired as exc:
        out, rc, timed_out = (exc.stdout or b"").decode(errors="replace"), None, True
    console = out + ("" if rc is None else f"\n@@TESTHOST DONE rc={rc}\n")
    log_path.write_text(console)
    script_rc, sections = parse_console(console)
    return RunResult(console, log_path, rc, timed_out, time.monotonic() - start, 0.0, script_rc, sections)
