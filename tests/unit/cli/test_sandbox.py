"""``kvmlite sandbox``: the VM it builds from the run options (unit level;
the real thing runs in the nested test host, tests/nested/test_sandbox.py)."""

from __future__ import annotations

import base64
import re
import shlex
from pathlib import Path

import pytest

from kvmlite.cli.cmd_sandbox import (CWD_TAG, ROOT_HIDDEN, ROOT_TAG, ROOT_TOP, BootFilter, guest_command,
                                     sandbox_config)
from kvmlite.cli.main import main
from kvmlite.vmm.config import ShareConfig, VmConfig

ENV = {"HOME": "/home/ann", "TERM": "xterm", "USER": "ann", "LANG": "en_GB.UTF-8", "SECRET_TOKEN": "s3cr3t"}


def decoded_command(params: str) -> str:
    word = re.search(r"kvmlite\.cmd=(\S+)", params)
    assert word, params
    return base64.b64decode(word.group(1)).decode()


def test_sandbox_config_root_view_overlay_and_cwd_share(tmp_path: Path) -> None:
    base = VmConfig(kernel="/k", initrd="/i", params="console=hvc0", shares=(ShareConfig(str(tmp_path), "data"),))
    config = sandbox_config(base, ["python3", "-c", "print(6*7)"], str(tmp_path), 1000, 1000, ENV)
    root, here, extra = config.shares
    assert (root.path, root.tag, root.read_only, root.view_top) == ("/", ROOT_TAG, True, ROOT_TOP)
    assert set(ROOT_HIDDEN) <= set(root.view_hidden) and "etc/shadow" in root.view_hidden
    assert not {"home", "root", "run", "tmp", "proc", "sys", "var"} & set(ROOT_TOP)
    assert (here.path, here.tag, here.read_only) == (str(tmp_path), CWD_TAG, False)
    assert extra.tag == "data"
    assert f"root={ROOT_TAG} rootfstype=9p rw kvmlite.overlay=1" in config.params
    assert "console=hvc0" in config.params


def test_sandbox_guest_command_runs_as_caller_in_cwd_with_small_environment() -> None:
    line = guest_command(["python3", "-c", "print(6*7)"], "/work/my dir", 1000, 1001, ENV)
    words = shlex.split(line)
    assert "mount --bind /mnt/sandboxcwd '/work/my dir'" in line
    assert "cd '/work/my dir'" in line
    at = words.index("setpriv")
    assert words[at:at + 4] == ["setpriv", "--reuid=1000", "--regid=1001", "--clear-groups"]
    assert words[-3:] == ["python3", "-c", "print(6*7)"]
    assert "HOME=/home/ann" in words and "USER=ann" in words and "PWD=/work/my dir" in words
    assert not any(w.startswith("SECRET_TOKEN") for w in words)     # the host's environment stays out


def test_sandbox_config_command_reaches_the_init_encoded(tmp_path: Path) -> None:
    config = sandbox_config(VmConfig(kernel="/k"), ["sh", "-c", "exit 3"], str(tmp_path), 0, 0, ENV)
    assert decoded_command(config.params).endswith("sh -c 'exit 3'")


def test_boot_filter_hides_boot_until_marker_then_passes_everything() -> None:
    seen: list[bytes] = []
    boot = BootFilter(b"kvmlite-init: ready")
    out = boot.wrap(seen.append)
    out(b"[    0.5] kernel noise\r\nkvmlite-init: re")
    out(b"ady\r\n42\r\n")
    out(b"more\r\n")
    assert b"".join(seen) == b"42\r\nmore\r\n"


def test_boot_filter_marker_never_seen_shows_boot_at_end(tmp_path: Path) -> None:
    boot = BootFilter(b"kvmlite-init: ready")
    out = boot.wrap(lambda data: pytest.fail("nothing passes before the marker"))
    out(b"Kernel panic - not syncing: VFS\r\n")
    with (tmp_path / "err").open("wb") as err:
        boot.show_unseen(err)
    assert (tmp_path / "err").read_bytes() == b"Kernel panic - not syncing: VFS\r\n"


def test_sandbox_without_command_exit_2_one_line(capsys) -> None:
    assert main(["sandbox"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kvmlite: error: give the command to run after '--': kvmlite sandbox -- CMD [ARGS...]"]


def test_sandbox_kernel_option_refused(capsys) -> None:
    assert main(["sandbox", "-k", "/boot/vmlinuz", "--", "true"]) == 2
    assert "-k is not taken" in capsys.readouterr().err


# --- kvmlite sandbox --agent (the SDK's sandboxes) ---

def test_agent_config_shares_root_and_package_not_cwd_adds_vsock_and_labels() -> None:
    from kvmlite.cli.cmd_sandbox import PACKAGE_TAG, PORT_LABEL, SANDBOX_LABEL, agent_config, package_parent

    base = VmConfig(kernel="/k", initrd="/i")
    config = agent_config(base, 1024, 1000, 1001, (("team", "a"),))
    root, package = config.shares
    assert (root.tag, root.read_only, root.view_top) == (ROOT_TAG, True, ROOT_TOP)
    assert (package.tag, package.read_only, package.view_top) == (PACKAGE_TAG, True, ("kvmlite",))
    assert Path(package.path) == package_parent() and (package_parent() / "kvmlite" / "agent").is_dir()
    assert CWD_TAG not in {s.tag for s in config.shares}          # an agent sandbox sees no host files
    assert config.vsock is not None and config.vsock.cid == 3
    assert dict(config.labels) == {SANDBOX_LABEL: "1", PORT_LABEL: "1024", "team": "a"}
    command = decoded_command(config.params)
    assert "-m kvmlite.agent --vsock-port 1024" in command and "PYTHONPATH=/mnt/kvmlitepkg" in command
    assert "chown 1000:1001 /home/user" in command and command.split(" && ")[-1].startswith("exec env -i ")
    assert f"root={ROOT_TAG} rootfstype=9p" in config.params


def test_agent_config_keeps_given_vsock_and_refuses_bad_port() -> None:
    from kvmlite.cli.cmd_sandbox import agent_config
    from kvmlite.errors import UsageError
    from kvmlite.vmm.config import VsockConfig

    base = VmConfig(kernel="/k", vsock=VsockConfig(7))
    assert agent_config(base, 5000, 0, 0).vsock == VsockConfig(7)
    with pytest.raises(UsageError, match="--agent-port 0"):
        agent_config(base, 0, 0, 0)


def test_agent_python_is_one_the_root_view_shows() -> None:
    from kvmlite.cli.cmd_sandbox import guest_python

    assert guest_python().lstrip("/").split("/")[0] in ROOT_TOP


def test_sandbox_agent_with_command_exit_2_one_line(capsys) -> None:
    assert main(["sandbox", "--agent", "--", "true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--agent runs no command" in err[0]


@pytest.mark.parametrize("label, message", [("novalue", "write KEY=VALUE"),
                                            ("kvmlite.sandbox=1", "'kvmlite.' are kvmlite's own")])
def test_bad_label_exit_2(capsys, label: str, message: str) -> None:
    assert main(["run", "-k", "/k", "--label", label]) == 2
    assert message in capsys.readouterr().err


def test_sandbox_restore_with_agent_is_usage_error(capsys, tmp_path) -> None:
    assert main(["sandbox", "--agent", "--restore", str(tmp_path)]) == 2
    assert "drop --agent" in capsys.readouterr().err
