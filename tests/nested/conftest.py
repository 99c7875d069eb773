"""The ``testhost`` fixture: one prepared nested test host per session;
``share_guest``: the default guest that mounts shares, up to date.

Tests that need it are marked ``@pytest.mark.nested``; when the test host
cannot be prepared (no QEMU, no apt) they are skipped with the reason.
"""

from __future__ import annotations

import pytest

from kvmlite.guest.setup import DefaultGuest

from .testhost import TestHost, TestHostUnavailable


@pytest.fixture(scope="session")
def testhost() -> TestHost:
    try:
        return TestHost.prepare()
    except TestHostUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def share_guest() -> DefaultGuest:
    """The guest that mounts shares, as `kvmlite setup` prepares it in the
    cache, brought up to date first (an init changed since the cache was
    built is rebuilt, as setup does): what --9p and sandbox boot."""
    from kvmlite.errors import KvmliteError
    from kvmlite.guest.setup import default_guest, setup_default_guest

    try:
        result = setup_default_guest()     # idempotent; rebuilds what changed
    except KvmliteError as exc:
        pytest.skip(f"cannot prepare the default guest: {exc}")
    guest = default_guest(shares=True)
    if guest is None:
        pytest.skip(f"no guest can mount shares: {result.share_error}")
    return guest
