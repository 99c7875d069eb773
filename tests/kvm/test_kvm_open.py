"""/dev/kvm missing or not permitted: one clear line, exit status 1."""

from __future__ import annotations

import os

import pytest

from kvmlite.cli.main import main
from kvmlite.kvm import Kvm, KvmUnavailable

pytestmark = pytest.mark.kvm


def test_kvm_missing_device_says_it_does_not_exist(tmp_path) -> None:
    with pytest.raises(KvmUnavailable) as info:
        Kvm(str(tmp_path / "kvm"))
    assert "does not exist" in str(info.value) and "\n" not in str(info.value)


def _open_as_nobody() -> str:
    """Open /dev/kvm in a child that dropped root; return what it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                Kvm("/dev/kvm")
                message = "opened"
            except KvmUnavailable as exc:
                message = f"{exc.exit_code}:{exc}"
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as f:
        return f.read().decode()


def test_kvm_not_permitted_says_permission_denied() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    if os.stat("/dev/kvm").st_mode & 0o006:
        pytest.skip("/dev/kvm is world-accessible here: nothing to deny")
    result = _open_as_nobody()
    assert result.startswith("1:/dev/kvm: permission denied"), result


def test_cli_kvm_missing_one_line_exit_1(monkeypatch, capsys, tmp_path) -> None:
    # main() configures the "kvmlite" logger for a terminal; undo that after
    # the test so later tests still see log records.
    import logging

    logger = logging.getLogger("kvmlite")
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    monkeypatch.setattr(logger, "level", logger.level)
    # The CLI always opens /dev/kvm; point the VM at a path that does not exist.
    import kvmlite.vmm.vm as vm_mod

    real_init = vm_mod.Vm.__init__

    def init(self, config, *, console_output=None, kvm_path=""):
        real_init(self, config, console_output=console_output, kvm_path=str(tmp_path / "nokvm"))

    monkeypatch.setattr(vm_mod.Vm, "__init__", init)
    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    status = main(["run", "-k", str(kernel)])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and "does not exist" in err, err
