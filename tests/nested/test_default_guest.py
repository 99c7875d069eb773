"""The default guest from ``kvmlite setup`` (issue: setup and a default guest).

``kvmlite run`` with no kernel boots it: to a shell prompt on the serial
console that answers typed commands, and with ``-- CMD`` it runs CMD and
exits with CMD's status.  One test-host boot.
"""

from __future__ import annotations

import shlex

import pytest

from kvmlite.guest.setup import default_guest
from kvmlite.paths import cache_dir

from .linux import hardware_kvm, run_linux_script
from .testhost import RunResult, TestHost

pytestmark = pytest.mark.nested
TIMEOUT = 1200


def _script() -> str:
    cache_home = shlex.quote(str(cache_dir().parent))
    return f"""
export XDG_CACHE_HOME={cache_home}
retried_section shell $INTERACT --expect "# " --send 'echo PROMPT-$((40+2)); uname -r' --expect PROMPT-42 --send 'exit 6' -- \\
    $KVMLITE run
retried_section command kvmlite run -- 'echo from-the-guest; exit 17'
retried_section argv kvmlite run -- sh -c 'echo "two words"; exit 0'
"""


@pytest.fixture(scope="module")
def guest_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    if default_guest() is None:
        from kvmlite.errors import KvmliteError
        from kvmlite.guest.setup import setup_default_guest

        try:
            setup_default_guest()          # what `kvmlite setup` does; idempotent
        except KvmliteError as exc:
            pytest.skip(f"cannot prepare the default guest: {exc}")
    host: TestHost | None = None if hardware_kvm() else request.getfixturevalue("testhost")
    result = run_linux_script(host, _script(), TIMEOUT, tmp_path_factory.mktemp("default-guest"))
    assert not result.timed_out, f"timed out after {TIMEOUT} s; {result.where()}"
    return result


def test_default_guest_serial_shell_prompt_answers(guest_runs: RunResult) -> None:
    rc, out = guest_runs.section("shell")
    crash = guest_runs.guest_crash("shell")
    if crash is not None and guest_runs.section("command").rc == 17:
        # Every run of the step crashed, while the same guest booted under
        # kvmlite in the same test host a moment later: the emulated test
        # host's nested-SVM crash (BENCHMARKS.md, "Nested instability").
        pytest.xfail(f"the inner guest triple-faulted in every run of the step under the emulated "
                     f"test host ({crash}), and booted in the next step; {guest_runs.where()}")
    assert "PROMPT-42" in out, f"{out[-2000:]}; {guest_runs.where()}"
    assert rc == 6, f"the shell's exit status must end kvmlite: rc={rc}; {guest_runs.where()}"


def test_default_guest_command_status_is_kvmlite_status(guest_runs: RunResult) -> None:
    rc, out = guest_runs.section("command")
    assert "from-the-guest" in out and rc == 17, f"rc={rc} {out[-1500:]}; {guest_runs.where()}"


def test_default_guest_command_argv_keeps_quoting(guest_runs: RunResult) -> None:
    rc, out = guest_runs.section("argv")
    assert "two words" in out and rc == 0, f"rc={rc} {out[-1500:]}; {guest_runs.where()}"
