"""A snapshot directory on disk (docs/snapshot.md).

    DIR/state      one header line of JSON, then the state as JSON
    DIR/memory     guest RAM, low region then high, byte for byte (sparse)

The header names the format (``FORMAT``), the kvmlite version that wrote
it, the size and SHA-256 of the state that follows, and the memory file's
size.  :func:`read_state` refuses, with one line, anything it cannot load
faithfully: a missing file, another format, a checksum that does not
match (a corrupt or edited state), a memory file of the wrong size (a
truncated copy).  The memory file is not checksummed: restore maps it
without reading it, which is the point of a snapshot.

Both files are written under temporary names and renamed into place, the
state last, so a directory with a ``state`` file holds a whole snapshot.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from kvmlite.base.state import Reader, StateError
from kvmlite.errors import KvmliteError
from kvmlite.vmm.config import DiskConfig, NetConfig, ShareConfig, VmConfig, VsockConfig

MAGIC = "kvmlite-snapshot"
FORMAT = 1
STATE_FILE = "state"
MEMORY_FILE = "memory"
MAX_STATE_BYTES = 64 << 20       # a state file larger than this is not one kvmlite wrote


class SnapshotError(StateError):
    """A snapshot that cannot be taken or restored (one line)."""


def _version() -> str:
    from kvmlite import __version__

    return __version__


def prepare_directory(directory: str | os.PathLike[str]) -> Path:
    """``directory``, made if missing; an existing one must hold no snapshot
    and nothing else (a snapshot never overwrites files)."""
    path = Path(directory)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise SnapshotError(f"snapshot directory {path}: exists and is not a directory") from None
    except OSError as exc:
        raise SnapshotError(f"snapshot directory {path}: {exc.strerror}") from None
    if any(path.iterdir()):
        raise SnapshotError(f"snapshot directory {path}: not empty (give a new or empty directory)")
    return path


def open_memory_for_writing(directory: Path) -> tuple[int, Path]:
    """A new temporary memory file in ``directory``: (descriptor, its path)."""
    tmp = directory / f".{MEMORY_FILE}.tmp"
    return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp


def write_state(directory: Path, state: dict[str, Any], memory_tmp: Path, memory_size: int) -> None:
    """Put the memory file in place, then the state file (header + body)."""
    body = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
    header = {"magic": MAGIC, "format": FORMAT, "kvmlite": _version(), "state_bytes": len(body),
              "state_sha256": hashlib.sha256(body).hexdigest(), "memory_bytes": memory_size}
    os.rename(memory_tmp, directory / MEMORY_FILE)
    tmp = directory / f".{STATE_FILE}.tmp"
    with open(tmp, "wb") as out:
        out.write(json.dumps(header, sort_keys=True).encode() + b"\n" + body)
        out.flush()
        os.fsync(out.fileno())
    os.rename(tmp, directory / STATE_FILE)


def read_state(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, state) of the snapshot in ``directory``, checked."""
    path = Path(directory) / STATE_FILE
    where = f"snapshot {directory}"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        raise SnapshotError(f"{where}: no {STATE_FILE} file (not a kvmlite snapshot directory)") from None
    except OSError as exc:
        raise SnapshotError(f"{where}: cannot read {STATE_FILE}: {exc.strerror}") from None
    first, _, body = data.partition(b"\n")
    header = _header(first, where)
    if len(body) != header["state_bytes"]:
        raise SnapshotError(f"{where}: the state is {len(body)} bytes, its header says {header['state_bytes']} "
                            "(truncated or corrupt)")
    if hashlib.sha256(body).hexdigest() != header["state_sha256"]:
        raise SnapshotError(f"{where}: the state's checksum does not match (corrupt)")
    try:
        state = json.loads(body)
    except ValueError:
        raise SnapshotError(f"{where}: the state is not valid JSON (corrupt)") from None
    _check_memory(Path(directory) / MEMORY_FILE, header["memory_bytes"], where)
    return header, state


def _header(line: bytes, where: str) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("magic") != MAGIC:
        raise SnapshotError(f"{where}: {STATE_FILE} is not a kvmlite snapshot state file")
    fmt = header.get("format")
    if fmt != FORMAT:
        raise SnapshotError(f"{where}: snapshot format {fmt!r} (written by kvmlite {header.get('kvmlite', '?')}); "
                            f"this kvmlite {_version()} reads format {FORMAT} only")
    r = Reader(header, where)
    try:
        r.int("state_bytes", 0, MAX_STATE_BYTES)
        r.int("memory_bytes", 1)
        r.str("state_sha256")
    except StateError as exc:
        raise SnapshotError(str(exc)) from None
    return header


def _check_memory(path: Path, size: int, where: str) -> None:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise SnapshotError(f"{where}: no {MEMORY_FILE} file") from None
    if actual != size:
        raise SnapshotError(f"{where}: the memory file is {actual} bytes, expected {size} (truncated or corrupt)")


# --- the configuration ------------------------------------------------------------

def config_to_dict(config: VmConfig) -> dict[str, Any]:
    """The VM's configuration as JSON values (tuples become lists)."""
    out = dataclasses.asdict(config)
    out.pop("extra", None)
    return out


def config_from_dict(data: object) -> VmConfig:
    """The :class:`VmConfig` :func:`config_to_dict` gave; a value the
    configuration refuses is a SnapshotError."""
    r = Reader(data, "snapshot config")
    d = dict(r.state)
    try:
        d["disks"] = tuple(DiskConfig(**x) for x in r.list("disks"))
        d["nics"] = tuple(_nic(x) for x in r.list("nics"))
        d["shares"] = tuple(_share(x) for x in r.list("shares"))
        d["vsock"] = VsockConfig(**d["vsock"]) if d.get("vsock") else None
        d["labels"] = tuple(tuple(pair) for pair in d.get("labels", ()))
        return VmConfig(**d)
    except (TypeError, ValueError, KvmliteError) as exc:
        raise SnapshotError(f"snapshot config: {exc}") from None


def _nic(data: dict[str, Any]) -> NetConfig:
    return NetConfig(**{**data, "hostfwd": tuple(data.get("hostfwd", ()))})


def _share(data: dict[str, Any]) -> ShareConfig:
    top = data.get("view_top")
    return ShareConfig(**{**data, "view_top": tuple(top) if top is not None else None,
                          "view_hidden": tuple(data.get("view_hidden", ()))})
