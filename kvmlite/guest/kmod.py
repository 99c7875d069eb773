"""Kernel modules: names, dependencies and load order, without depmod.

A kernel's modules live in ``/lib/modules/<version>/``.  An installed
kernel has ``modules.dep`` (written by depmod: ``path: dep-path ...``); an
unpacked Debian package has only ``modules.builtin`` (one path per module
compiled into the kernel) and ``modules.order``.  So dependencies come from
``modules.dep`` when present, else from each module's ``.modinfo`` section:
NUL-separated ``key=value`` strings, among them ``depends=a,b`` and
``softdep=pre: x post: y`` (include/linux/module.h, MODULE_INFO;
scripts/mod/modpost.c writes ``depends``).

Module names use underscores: ``kvm-amd.ko`` is module ``kvm_amd``, as
kmod's ``modname_normalize`` treats them.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from kvmlite.errors import KvmliteError
from kvmlite.guest import elf

SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
SEARCH_DIRS = ("kernel", "updates", "extra")


def module_name(path: str | Path) -> str:
    """``.../kvm-amd.ko.xz`` -> ``kvm_amd``."""
    base = Path(path).name
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return normalize(base)


def normalize(name: str) -> str:
    return name.strip().replace("-", "_")


def read_module(path: Path) -> bytes:
    """A module's ELF bytes, decompressed according to its suffix."""
    raw = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(raw)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(raw)
    if path.name.endswith(".ko.zst"):
        return _unzstd(raw, path)
    return raw


def _unzstd(raw: bytes, path: Path) -> bytes:
    tool = shutil.which("zstd")
    if tool is None:
        raise KvmliteError(f"cannot decompress {path}: the zstd command is not installed (apt-get install zstd)")
    done = subprocess.run([tool, "-dcq"], input=raw, capture_output=True)
    if done.returncode != 0:
        raise KvmliteError(f"cannot decompress {path}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def parse_modinfo(section: bytes) -> dict[str, list[str]]:
    """``.modinfo`` contents -> key -> values, in order of appearance."""
    info: dict[str, list[str]] = {}
    for item in section.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def modinfo(data: bytes, what: str = "module") -> dict[str, list[str]]:
    section = elf.section_data(data, ".modinfo", what)
    if section is None:
        raise KvmliteError(f"{what} has no .modinfo section: not a kernel module")
    return parse_modinfo(section)


@dataclass(frozen=True)
class Depends:
    """A module's direct dependencies."""

    hard: tuple[str, ...]   # ``depends=``: must be loaded first
    soft: tuple[str, ...]   # ``softdep=pre:``: loaded first when they exist


def depends_of(info: dict[str, list[str]]) -> Depends:
    hard = [n for v in info.get("depends", []) for n in v.split(",") if n.strip()]
    return Depends(tuple(normalize(n) for n in hard), tuple(normalize(n) for n in _softdep_pre(info)))


def _softdep_pre(info: dict[str, list[str]]) -> list[str]:
    """``softdep=pre: a b post: c`` -> ``[a, b]``."""
    names: list[str] = []
    for value in info.get("softdep", []):
        pre = False
        for word in value.split():
            if word in ("pre:", "post:"):
                pre = word == "pre:"
            elif pre:
                names.append(word)
    return names


@dataclass(frozen=True)
class Module:
    name: str
    path: Path


@dataclass(frozen=True)
class Resolution:
    """The result of :meth:`ModuleTree.resolve`."""

    modules: tuple[Module, ...]   # to load, dependencies first
    builtin: tuple[str, ...]      # requested or needed, but compiled in
    missing: tuple[str, ...]      # not in this kernel (or a dependency is not)


class ModuleTree:
    """The modules of one kernel version (``/lib/modules/<version>``)."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise KvmliteError(f"kernel modules directory {root} does not exist")
        self.root = root
        self.builtin = self._read_builtin()
        self._dep = self._read_modules_dep()
        self.paths = self._index_paths()
        self._depends_cache: dict[str, Depends] = {}

    def _read_builtin(self) -> frozenset[str]:
        f = self.root / "modules.builtin"
        if not f.is_file():
            return frozenset()
        return frozenset(module_name(line) for line in f.read_text().split() if line)

    def _read_modules_dep(self) -> dict[str, tuple[Path, tuple[str, ...]]] | None:
        """``modules.dep``: ``kernel/a.ko: kernel/b.ko kernel/c.ko`` per line."""
        f = self.root / "modules.dep"
        if not f.is_file():
            return None
        table: dict[str, tuple[Path, tuple[str, ...]]] = {}
        for line in f.read_text().splitlines():
            path, sep, deps = line.partition(":")
            if sep:
                table[module_name(path)] = (self.root / path.strip(), tuple(module_name(d) for d in deps.split()))
        return table

    def _index_paths(self) -> dict[str, Path]:
        if self._dep is not None:
            return {name: path for name, (path, _) in self._dep.items()}
        found: dict[str, Path] = {}
        for sub in SEARCH_DIRS:
            for path in sorted((self.root / sub).rglob("*.ko*")):
                if path.name.endswith(SUFFIXES):
                    found.setdefault(module_name(path), path)
        return found

    def depends(self, name: str) -> Depends:
        """Direct dependencies of an available module."""
        if name not in self._depends_cache:
            self._depends_cache[name] = self._load_depends(name)
        return self._depends_cache[name]

    def _load_depends(self, name: str) -> Depends:
        path = self.paths[name]
        deps = depends_of(modinfo(read_module(path), str(path)))
        if self._dep is None:
            return deps
        # depmod's modules.dep is authoritative for hard dependencies.
        return Depends(self._dep[name][1], deps.soft)

    def resolve(self, names: Iterable[str]) -> Resolution:
        """The closure of ``names`` in load order (dependencies first)."""
        walk = _Walk(self)
        for name in names:
            walk.visit(normalize(name), required=True)
        return Resolution(tuple(walk.order), tuple(walk.builtin), tuple(walk.missing))


class _Walk:
    """Depth-first post-order over the dependency graph."""

    def __init__(self, tree: ModuleTree) -> None:
        self.tree = tree
        self.order: list[Module] = []
        self.builtin: list[str] = []
        self.missing: list[str] = []
        self._state: dict[str, bool] = {}   # name -> will be present
        self._visiting: set[str] = set()

    def visit(self, name: str, required: bool) -> bool:
        """Add ``name`` and its dependencies; True when it will be present."""
        if name in self._visiting:
            raise KvmliteError(f"kernel module dependency cycle through {name}")
        if name in self._state:
            return self._state[name]
        if name in self.tree.builtin:
            return self._settle(name, True, self.builtin)
        if name not in self.tree.paths:
            # A softdep that names an alias (crypto-crc32c) is not an error.
            return self._settle(name, False, self.missing if required else None)
        self._visiting.add(name)
        deps = self.tree.depends(name)
        ok = all([self.visit(d, required=True) for d in deps.hard])
        for soft in deps.soft:
            self.visit(soft, required=False)
        self._visiting.discard(name)
        if ok:
            self.order.append(Module(name, self.tree.paths[name]))
        return self._settle(name, ok, None if ok else self.missing)

    def _settle(self, name: str, ok: bool, bucket: list[str] | None) -> bool:
        self._state[name] = ok
        if bucket is not None and name not in bucket:
            bucket.append(name)
        return ok
