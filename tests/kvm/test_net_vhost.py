"""``-n mode=tap,vhost=1`` where /dev/vhost-net does not exist (as on the
machines kvmlite is developed on): one line naming what is missing, exit
status 1, no guest run and no tap left behind.  The data path on a real
vhost-net is tested in the nested test host (tests/nested/test_vhost_net.py).
"""

from __future__ import annotations

import os

import pytest

from kvmlite.net.vhost import VHOST_NET_PATH
from tests.kvm.conftest import assert_one_line_error

pytestmark = pytest.mark.kvm


def interfaces() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def test_run_vhost_without_vhost_net_is_one_line_exit_1(kvmlite, guest) -> None:
    if os.path.exists(VHOST_NET_PATH):
        pytest.skip(f"{VHOST_NET_PATH} exists here: the missing-device error cannot be seen")
    before = interfaces()

    run = kvmlite("run", "-k", str(guest("virtio")), "-n", "mode=tap,vhost=1", timeout=60)

    assert run.status == 1, run
    assert_one_line_error(run)
    assert run.stderr.strip() == ("kvmlite: error: -n tap NIC 0: vhost-net is not available: "
                                  "/dev/vhost-net does not exist (modprobe vhost_net)"), run
    assert "virtio:" not in run.stdout, run          # the guest never ran
    assert interfaces() <= before, "a tap was made for a NIC that could not be"
