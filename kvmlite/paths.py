"""Per-user directories: the cache (default guest, test assets) and the
runtime directory (control sockets)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kvmlite``, else ``~/.cache/kvmlite``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvmlite"


def runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR/kvmlite``, else ``~/.kvmlite``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "kvmlite"
    return Path(os.path.expanduser("~")) / ".kvmlite"
