"""Rate-limited guest error logging."""

from __future__ import annotations

import logging

import pytest

from kvmlite.devices.virtio.ratelimit import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ratelimit_over_burst_suppresses_then_reports_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.ratelimit"), burst=2, interval=10, clock=clock)

    with caplog.at_level(logging.WARNING):
        results = [limited.warning(f"bad ring {i}") for i in range(5)]
        clock.now = 10.0
        limited.warning("bad ring again")

    assert results == [True, True, False, False, False]
    assert [r.getMessage() for r in caplog.records] == [
        "bad ring 0", "bad ring 1", "bad ring again (3 similar messages suppressed)"]
