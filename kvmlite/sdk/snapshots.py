"""Where the SDK keeps sandbox snapshots (docs/sdk.md, docs/snapshot.md).

* a paused sandbox (``sb.pause()``): ``$XDG_STATE_HOME/kvmlite/paused/ID``
  (default ``~/.local/state``), until ``Sandbox.connect(ID)`` resumes it;
* the start-up cache: ``<cache>/kvmlite/sandbox-snapshots/KEY`` (or
  ``$KVMLITE_SANDBOX_SNAPSHOTS/KEY``), a sandbox
  saved right after its agent first answered, for every later
  ``Sandbox.create()`` with the same settings.  KEY hashes everything that
  shapes the booted guest: the VMM's arguments but the sandbox's name,
  timeout and labels, the kvmlite version and the guest kernel and
  initramfs (path, size, mtime), so a rebuilt guest or another kvmlite
  never meets an old snapshot.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Sequence

from kvmlite.paths import cache_dir

PER_SANDBOX = ("--name", "--timeout", "--label")     # options that do not shape the booted guest


def paused_dir(sandbox_id: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "kvmlite" / "paused" / sandbox_id


def cache_root() -> Path:
    """``$KVMLITE_SANDBOX_SNAPSHOTS``, else ``<cache>/kvmlite/sandbox-snapshots``."""
    override = os.environ.get("KVMLITE_SANDBOX_SNAPSHOTS")
    return Path(override) if override else cache_dir() / "sandbox-snapshots"


def cache_key(argv: Sequence[str], guest_files: Sequence[str]) -> str:
    """A name for the booted guest that ``argv`` (the VMM's command line)
    and ``guest_files`` (kernel, initramfs) give."""
    from kvmlite import __version__

    shaping: list[str] = []
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg in PER_SANDBOX:
            skip = True
        else:
            shaping.append(arg)
    files = []
    for path in guest_files:
        try:
            st = os.stat(path)
            files.append([path, st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([path, None, None])
    blob = json.dumps({"argv": shaping, "files": files, "kvmlite": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached(key: str) -> Path | None:
    """The start-up snapshot for ``key``, if a whole one is there."""
    path = cache_root() / key
    return path if (path / "state").is_file() else None


def new_cache_dir() -> Path:
    """A fresh, empty directory to save into; :func:`publish` moves it to its key."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".tmp-{secrets.token_hex(6)}"
    path.mkdir(mode=0o700)
    return path


def publish(tmp: Path, key: str) -> None:
    """Make ``tmp`` the snapshot for ``key``; a snapshot another process put
    there first wins (it is as good), and ``tmp`` goes."""
    try:
        os.rename(tmp, cache_root() / key)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
