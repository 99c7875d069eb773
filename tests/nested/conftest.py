"""The ``testhost`` fixture: one prepared nested test host per session.

Tests that need it are marked ``@pytest.mark.nested``; when the test host
cannot be prepared (no QEMU, no apt) they are skipped with the reason.
"""

from __future__ import annotations

import pytest

from .testhost import TestHost, TestHostUnavailable


@pytest.fixture(scope="session")
def testhost() -> TestHost:
    try:
        return TestHost.prepare()
    except TestHostUnavailable as exc:
        pytest.skip(str(exc))
