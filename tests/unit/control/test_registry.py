"""Named instances in the runtime directory: claims, liveness, stale
entries, permissions.  Real files, real flock(2), real processes."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kvmlite.control.registry import Liveness, NoSuchVm, Registry, check_name, generated_name, read_pid
from kvmlite.errors import KvmliteError, UsageError

from .conftest import needs_root

REPO = Path(__file__).resolve().parents[3]


def holder(directory: Path, name: str) -> subprocess.Popen:
    """Another process that claims ``name`` and binds its socket, then waits."""
    code = textwrap.dedent(f"""
        import socket, sys, time
        from pathlib import Path
        from kvmlite.control.registry import Registry
        claim = Registry(Path({str(directory)!r})).claim({name!r})
        s = socket.socket(socket.AF_UNIX); s.bind(str(claim.socket_path)); s.listen(1)
        print("ready", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def test_claim_creates_private_directory_and_lock_with_pid(registry: Registry) -> None:
    claim = registry.claim("web")
    try:
        assert stat.S_IMODE(registry.directory.stat().st_mode) == 0o700
        assert read_pid(claim.lock_path) == os.getpid()
        assert stat.S_IMODE(claim.lock_path.stat().st_mode) == 0o600
        assert registry.probe("web") is Liveness.LIVE
    finally:
        claim.release()
    assert not claim.lock_path.exists() and registry.probe("web") is Liveness.ABSENT


def test_claim_name_held_by_live_process_refused_with_pid(registry: Registry) -> None:
    proc = holder(registry.directory, "web")
    try:
        with pytest.raises(KvmliteError, match=rf"'web' is already running \(pid {proc.pid}\)"):
            registry.claim("web")
        assert registry.probe("web") is Liveness.LIVE
    finally:
        proc.kill()
        proc.wait()


def test_probe_after_sigkill_stale_and_cleaned(registry: Registry) -> None:
    proc = holder(registry.directory, "web")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert registry.socket_path("web").exists()          # the dead VMM left it behind
    assert registry.probe("web") is Liveness.STALE
    assert not registry.socket_path("web").exists() and not registry.lock_path("web").exists()
    assert registry.names() == []


def test_claim_after_sigkill_takes_over_name(registry: Registry) -> None:
    proc = holder(registry.directory, "web")
    proc.kill()
    proc.wait()
    claim = registry.claim("web")
    try:
        assert read_pid(claim.lock_path) == os.getpid()
        assert not claim.socket_path.exists()             # the stale socket is gone, ready to bind
    finally:
        claim.release()


def test_probe_socket_without_lock_file_judged_by_connect(registry: Registry) -> None:
    registry.ensure_directory()
    path = registry.socket_path("orphan")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(1)
    assert registry.probe("orphan") is Liveness.LIVE
    s.close()                                             # file stays, nobody listens
    assert registry.probe("orphan") is Liveness.STALE
    assert not path.exists()


def test_claim_refuses_name_of_listening_lockless_socket(registry: Registry) -> None:
    registry.ensure_directory()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(registry.socket_path("x")))
    s.listen(1)
    try:
        with pytest.raises(KvmliteError, match="in use by another process"):
            registry.claim("x")
        assert not registry.lock_path("x").exists()
    finally:
        s.close()


def test_names_ignores_unrelated_files(registry: Registry) -> None:
    registry.ensure_directory()
    for f in ("a.sock", "b.lock", "notes.txt", ".hidden.sock", "bad name.sock"):
        (registry.directory / f).touch()
    assert registry.names() == ["a", "b"]


def test_names_missing_directory_empty(tmp_path: Path) -> None:
    assert Registry(tmp_path / "nope").names() == []


def test_ensure_directory_tightens_loose_mode(registry: Registry) -> None:
    registry.directory.mkdir(mode=0o755)
    os.chmod(registry.directory, 0o755)
    registry.ensure_directory()
    assert stat.S_IMODE(registry.directory.stat().st_mode) == 0o700


@needs_root
def test_directory_of_another_user_refused(registry: Registry) -> None:
    registry.directory.mkdir()
    os.chown(registry.directory, 65534, 65534)
    with pytest.raises(KvmliteError, match="belongs to uid 65534.*refusing"):
        registry.claim("web")


def test_directory_symlink_refused(registry: Registry, tmp_path: Path) -> None:
    registry.directory.symlink_to(tmp_path)
    with pytest.raises(KvmliteError, match="not a directory"):
        registry.ensure_directory()


@needs_root
def test_socket_of_another_user_refused(registry: Registry) -> None:
    registry.ensure_directory()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(registry.socket_path("web")))
    os.chown(registry.socket_path("web"), 65534, 65534)
    s.close()
    with pytest.raises(KvmliteError, match="belongs to uid 65534.*refusing to talk to it"):
        registry.check_socket_owner("web")


def test_check_socket_owner_regular_file_refused(registry: Registry) -> None:
    registry.ensure_directory()
    registry.socket_path("web").touch()
    with pytest.raises(KvmliteError, match="not a socket"):
        registry.check_socket_owner("web")


def test_check_socket_owner_missing_is_no_such_vm(registry: Registry) -> None:
    with pytest.raises(NoSuchVm, match="no VM named 'ghost'"):
        registry.check_socket_owner("ghost")


def test_claim_socket_path_too_long_clear_error(tmp_path: Path) -> None:
    registry = Registry(tmp_path / ("d" * 100))
    with pytest.raises(KvmliteError, match="too long for a Unix socket.*XDG_RUNTIME_DIR"):
        registry.claim("web")
    assert registry.names() == []


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "-x", ".x", "a b", "x" * 65, "é"])
def test_check_name_invalid_usage_error(name: str) -> None:
    with pytest.raises(UsageError):
        check_name(name)


def test_generated_name_uses_pid() -> None:
    assert generated_name(1234) == "guest-1234"
    check_name(generated_name())


# --- a VM's own runtime directory (NAME.d) ---

def test_vm_dir_created_private_and_not_taken_for_a_name(registry: Registry) -> None:
    path = registry.ensure_vm_dir("web")

    assert path == registry.directory / "web.d"
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700
    assert registry.names() == []
    assert registry.ensure_vm_dir("web") == path        # an existing one is fine


def test_vm_dir_of_any_name_never_collides_with_another_names_files(registry: Registry) -> None:
    assert registry.vm_dir("x") not in {registry.socket_path(n) for n in ("x", "x.d", "x.sock")}
    assert registry.vm_dir("x.sock") != registry.socket_path("x")


def test_vm_dir_existing_one_made_private(registry: Registry) -> None:
    registry.ensure_directory()
    (registry.directory / "web.d").mkdir(mode=0o755)
    os.chmod(registry.directory / "web.d", 0o755)

    registry.ensure_vm_dir("web")

    assert stat.S_IMODE(os.lstat(registry.directory / "web.d").st_mode) == 0o700


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_vm_dir_that_is_not_a_directory_refused(registry: Registry, tmp_path: Path, kind: str) -> None:
    registry.ensure_directory()
    target = registry.directory / "web.d"
    if kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target.write_text("")

    with pytest.raises(KvmliteError, match="web.d is not a directory of yours; refusing to use it"):
        registry.ensure_vm_dir("web")
