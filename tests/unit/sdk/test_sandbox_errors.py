"""The SDK's failures are explicit without a VM: a VMM that cannot start
raises SandboxError with its own error line, at once, and leaves nothing
behind (the real sandboxes run in the nested test host,
tests/nested/test_sdk.py)."""

from __future__ import annotations

import os
import time

import pytest

from kvmlite import Sandbox, SandboxError


@pytest.fixture
def no_guest(tmp_path, monkeypatch):
    """No default guest in the cache, a fresh runtime directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path


def test_sandbox_create_without_guest_raises_with_vmm_error_line(no_guest) -> None:
    start = time.monotonic()
    with pytest.raises(SandboxError) as info:
        Sandbox.create(timeout=30, boot_timeout=60)
    assert time.monotonic() - start < 30                  # the VMM's exit is seen, not the boot timeout
    message = str(info.value)
    assert "exited with status" in message and "kvmlite setup" in message
    run = no_guest / "run" / "kvmlite"
    assert not run.exists() or not [p for p in run.iterdir() if p.name.startswith("sb-")]


def test_sandbox_template_refused(no_guest) -> None:
    with pytest.raises(SandboxError, match="one template"):
        Sandbox(template="python")


def test_sandbox_connect_unknown_id_raises(no_guest) -> None:
    with pytest.raises(SandboxError, match="not running"):
        Sandbox.connect("sb-nosuch")


def test_sandbox_list_empty_runtime_is_empty(no_guest) -> None:
    assert Sandbox.list() == []


def test_top_level_names_import_lazily() -> None:
    import subprocess
    import sys

    code = ("import sys, kvmlite; assert 'kvmlite.sdk' not in sys.modules; "
            "from kvmlite import Vm, VmConfig, Sandbox; assert 'kvmlite.sdk' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert out.stdout.strip() == "ok", out.stderr


def test_sandbox_failed_create_leaves_no_descriptor(no_guest) -> None:
    with pytest.raises(SandboxError):       # the first create starts the launcher: its socket stays
        Sandbox.create(timeout=30, boot_timeout=60)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(SandboxError):
        Sandbox.create(timeout=30, boot_timeout=60)
    assert len(os.listdir("/proc/self/fd")) == before
