"""RLIMIT_NOFILE is raised before a VM is built (a 9p root holds a
descriptor per cached fid): checked in a child process whose limits start
low, so this test process keeps its own."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = """
import resource
from kvmlite.vmm.limits import raise_nofile_limit
resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
got = raise_nofile_limit(target={target})
print(got, *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def _run(soft: int, hard: int, target: int, as_user: bool = False) -> list[int]:
    code = CODE.format(soft=soft, hard=hard, target=target)
    prefix = []
    if as_user and os.geteuid() == 0:
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    out = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()), check=True).stdout
    return [int(x) for x in out.split()]


def test_raise_nofile_soft_goes_to_hard_for_a_user() -> None:
    got, soft, hard = _run(256, 4096, 1 << 18, as_user=True)
    assert got == soft == 4096 and hard == 4096 or (os.geteuid() == 0 and soft == hard == 1 << 18)


def _can_raise_hard() -> bool:
    probe = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096)); "
             "resource.setrlimit(resource.RLIMIT_NOFILE, (100000, 100000))")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def test_raise_nofile_lifts_hard_to_target_with_cap_sys_resource() -> None:
    got, soft, hard = _run(256, 4096, 100000)
    if _can_raise_hard():
        assert got == soft == hard == 100000
    else:                   # no CAP_SYS_RESOURCE here (a container): the soft limit still goes to the hard one
        assert got == soft == hard == 4096


def test_raise_nofile_never_lowers() -> None:
    got, soft, hard = _run(8192, 8192, 1024, as_user=True)
    assert got == soft == 8192
