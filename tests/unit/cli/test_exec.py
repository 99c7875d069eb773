"""``kvmlite exec``'s errors (the real thing runs in the nested test host,
tests/nested/test_sdk.py)."""

from __future__ import annotations

import pytest

from kvmlite.cli.main import main


@pytest.fixture(autouse=True)
def empty_runtime(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))


def test_exec_needs_a_name_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["exec", "--", "true"])
    assert info.value.code == 2
    assert "-n/--name" in capsys.readouterr().err


def test_exec_needs_a_command_exit_2(capsys) -> None:
    assert main(["exec", "-n", "sb"]) == 2
    assert "give the command to run" in capsys.readouterr().err


def test_exec_no_such_vm_one_line_exit_1(capsys) -> None:
    assert main(["exec", "-n", "nosuch", "--", "true"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sandbox nosuch: not running" in err[0]


def test_exec_bad_env_exit_2(capsys) -> None:
    assert main(["exec", "-n", "sb", "-e", "X", "--", "true"]) == 2
    assert "-e 'X': write KEY=VALUE" in capsys.readouterr().err
