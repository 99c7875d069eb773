"""Fetch a Debian package without installing it.

``apt-cache policy`` names the candidate version, ``apt-cache show
NAME=VERSION`` gives its SHA256 (the ``SHA256`` field of the repository's
Packages index, see the Debian repository format), ``apt-get download``
fetches the ``.deb`` into
the cache (no root needed), we check the SHA256 ourselves, and ``dpkg-deb
-x`` unpacks it into a directory of its own.  Nothing touches the system's
package database.

Cache layout under the directory given (e.g. ``cache_dir()/packages``)::

    debs/<name>_<version>.deb       verified downloads
    trees/<name>_<version>/         unpacked, complete once renamed into place
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvmlite.errors import KvmliteError
from kvmlite.guest.progress import QUIET, Progress


@dataclass(frozen=True)
class PackageRef:
    """One version of a package as apt's index describes it."""

    name: str
    version: str
    sha256: str
    size: int

    @property
    def stem(self) -> str:
        """``name_version`` with the epoch colon quoted as apt quotes it."""
        return f"{self.name}_{self.version.replace(':', '%3a')}"


@dataclass(frozen=True)
class UnpackedPackage:
    ref: PackageRef
    root: Path        # the unpacked filesystem tree


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise KvmliteError(f"{name} not found: fetching Debian packages needs apt and dpkg (a Debian or Ubuntu system)")
    return path


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=_apt_env())
    if done.returncode != 0:
        raise KvmliteError(f"{what} failed: {_last_line(done.stderr or done.stdout)}")
    return done.stdout


def _apt_env() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def candidate_version(name: str) -> str:
    """The version ``apt-get download NAME`` would fetch."""
    out = _run([_tool("apt-cache"), "policy", name], f"apt-cache policy {name}")
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Candidate" and value.strip() not in ("", "(none)"):
            return value.strip()
    raise KvmliteError(f"Debian package '{name}' is not known to apt (check the name, or run 'apt-get update')")


def package_ref(name: str) -> PackageRef:
    """Name, candidate version, SHA256 and size from ``apt-cache show``."""
    version = candidate_version(name)
    out = _run([_tool("apt-cache"), "show", f"{name}={version}"], f"apt-cache show {name}")
    fields = _first_stanza(out)
    if "SHA256" not in fields:
        raise KvmliteError(f"apt-cache show {name}={version} gives no SHA256 field")
    return PackageRef(name, version, fields["SHA256"].lower(), int(fields.get("Size", "0")))


def _first_stanza(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        if not line[0].isspace():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def depends(name: str) -> list[str]:
    """Package names in ``Depends:`` lines of ``apt-cache depends NAME``."""
    out = _run([_tool("apt-cache"), "depends", name], f"apt-cache depends {name}")
    found = []
    for line in out.splitlines():
        key, _, value = line.strip().lstrip("|").partition(":")
        if key == "Depends" and not value.strip().startswith("<"):
            found.append(value.strip())
    return found


def resolve_kernel_package(name: str) -> str:
    """``linux-image-cloud-amd64`` -> ``linux-image-6.1.0-NN-cloud-amd64``.

    A meta-package depends on the current versioned image package; a name
    that is already versioned (depends on no other ``linux-image-``) is
    returned as it is.
    """
    images = [d for d in depends(name) if d.startswith("linux-image-") and d != name]
    return images[0] if images else name


def ensure_writable(directory: Path) -> None:
    """Create ``directory`` and prove it can hold files, or say why not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as exc:
        raise KvmliteError(f"cache directory {directory} is not writable: {exc.strerror or exc}") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(ref: PackageRef, cache: Path, progress: Progress = QUIET) -> Path:
    """The verified ``.deb`` of ``ref`` in ``cache/debs``, downloading it if needed."""
    debs = cache / "debs"
    ensure_writable(debs)
    final = debs / f"{ref.stem}.deb"
    if final.is_file() and sha256_file(final) == ref.sha256:
        return final
    progress.step(f"downloading {ref.name} {ref.version} ({ref.size / 1e6:.1f} MB)")
    with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as tmp:
        got = _download(ref, Path(tmp))
        _verify(got, ref)
        got.replace(final)
    return final


def _download(ref: PackageRef, into: Path) -> Path:
    argv = [_tool("apt-get"), "download", "-q"]
    if os.geteuid() == 0:
        # apt drops to the _apt user, who cannot write into root's cache.
        argv += ["-o", "APT::Sandbox::User=root"]
    _run(argv + [f"{ref.name}={ref.version}"], f"apt-get download {ref.name}", cwd=into)
    found = sorted(into.glob("*.deb"))
    if len(found) != 1:
        raise KvmliteError(f"apt-get download {ref.name} left {len(found)} .deb files, expected 1")
    return found[0]


def _verify(deb: Path, ref: PackageRef) -> None:
    actual = sha256_file(deb)
    if actual != ref.sha256:
        raise KvmliteError(f"{deb.name}: SHA256 {actual} does not match apt's {ref.sha256}")


def unpack(deb: Path, ref: PackageRef, cache: Path, progress: Progress = QUIET) -> Path:
    """``dpkg-deb -x`` into ``cache/trees/<stem>`` (reused when present)."""
    trees = cache / "trees"
    final = trees / ref.stem
    if final.is_dir():
        return final
    ensure_writable(trees)
    progress.step(f"unpacking {deb.name}")
    tmp = Path(tempfile.mkdtemp(dir=trees, prefix=".unpack-"))
    try:
        _run([_tool("dpkg-deb"), "-x", str(deb), str(tmp)], f"dpkg-deb -x {deb.name}")
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def fetch_unpacked(name: str, cache: Path, progress: Progress = QUIET) -> UnpackedPackage:
    """Look up, fetch, verify and unpack the candidate version of ``name``."""
    ensure_writable(cache)
    ref = package_ref(name)
    trees = cache / "trees" / ref.stem
    if trees.is_dir():
        return UnpackedPackage(ref, trees)
    deb = fetch(ref, cache, progress)
    return UnpackedPackage(ref, unpack(deb, ref, cache, progress))
