"""Both backends offer every name of the NetBackend interface the
virtio-net device uses."""

from __future__ import annotations

import inspect

import pytest

from kvmlite.net import VNET_HDR_LEN, NetBackend, PasstBackend, TapBackend

METHODS = ["fileno", "recv_into", "send", "flush", "offloads", "set_offloads", "close"]


@pytest.mark.parametrize("backend", [TapBackend, PasstBackend])
def test_backend_has_every_method_of_the_interface(backend: type) -> None:
    for name in METHODS:
        ours = inspect.signature(getattr(backend, name))
        theirs = inspect.signature(getattr(NetBackend, name))
        assert list(ours.parameters) == list(theirs.parameters), f"{backend.__name__}.{name}"


def test_backend_vnet_hdr_per_backend() -> None:
    assert VNET_HDR_LEN == 12
    assert TapBackend.vnet_hdr is True and TapBackend.mtu is None
    assert PasstBackend.vnet_hdr is False
    assert inspect.signature(PasstBackend).parameters["mtu"].default == 65520
