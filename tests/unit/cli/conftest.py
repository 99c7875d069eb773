"""``kvmlite run`` sets kvmlite's logger up for the terminal (its own
handler, no propagation); tests that call it put the logger back, so
later tests' ``caplog`` still sees kvmlite's records."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _restore_kvmlite_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("kvmlite")
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    monkeypatch.setattr(logger, "level", logger.level)
