"""The network errors: one line, the operation and errno carried, and a
gone backend is a ConnectionError."""

from __future__ import annotations

import errno

from kvmlite.errors import KvmliteError
from kvmlite.net.errors import BackendGone, NetError


def test_errors_from_errno_names_operation_and_errno() -> None:
    e = NetError.from_errno("TUNSETIFF", errno.EPERM, "tap0")
    assert str(e) == "TUNSETIFF failed: Operation not permitted (EPERM): tap0"
    assert (e.operation, e.errno) == ("TUNSETIFF", errno.EPERM)
    assert isinstance(e, KvmliteError) and e.exit_code == 1
    assert isinstance(e, OSError) and not isinstance(e, ConnectionError)


def test_errors_message_is_always_one_line() -> None:
    assert str(NetError("passt exited:\n  No external\trouting\n")) == "passt exited: No external routing"


def test_errors_backend_gone_is_connection_error_and_kvmlite_error() -> None:
    e = BackendGone.from_errno("read", errno.EBADFD)
    assert isinstance(e, ConnectionError) and isinstance(e, OSError)
    assert isinstance(e, NetError) and isinstance(e, KvmliteError)
    assert e.errno == errno.EBADFD
    assert str(e).startswith("read failed: ")
    try:
        raise BackendGone("tap0 is gone")
    except ConnectionError as caught:
        assert str(caught) == "tap0 is gone"
