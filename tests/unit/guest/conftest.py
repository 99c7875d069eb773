"""Fixtures for the guest-preparation tests: real inputs from the cache.

The Debian cloud kernel and busybox are fetched into ``cache_dir()/packages``
once (a few seconds; later runs reuse them).  Without apt the tests that
need them are skipped and say so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvmlite.errors import KvmliteError
from kvmlite.guest import busybox, kernel
from kvmlite.paths import cache_dir


def _packages() -> Path:
    return cache_dir() / "packages"


def _fetch_kernel(package: str, cache: Path) -> kernel.KernelFiles:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip(f"apt-get/dpkg-deb not installed: cannot fetch Debian's {package}")
    try:
        return kernel.debian_kernel(package, cache)
    except KvmliteError as exc:
        if "not known to apt" in str(exc):
            pytest.skip(f"apt has no package lists with {package}: run 'apt-get update'")
        pytest.fail(f"fetching {package} failed: {exc}")


@pytest.fixture(scope="session")
def package_cache() -> Path:
    """The real package cache (computed before any test changes XDG_CACHE_HOME)."""
    return _packages()


@pytest.fixture(scope="session")
def cloud_kernel(package_cache: Path) -> kernel.KernelFiles:
    return _fetch_kernel(kernel.CLOUD_KERNEL_PACKAGE, package_cache)


@pytest.fixture(scope="session")
def generic_kernel(package_cache: Path) -> kernel.KernelFiles:
    """Debian's generic kernel (about 70 MB; the nested test host uses it too)."""
    return _fetch_kernel(kernel.GENERIC_KERNEL_PACKAGE, package_cache)


@pytest.fixture(scope="session")
def static_busybox(package_cache: Path) -> Path:
    if not busybox.is_static_busybox(busybox.HOST_BUSYBOX) and shutil.which("apt-get") is None:
        pytest.skip("no static /bin/busybox and no apt-get to fetch busybox-static")
    return busybox.find_busybox(package_cache)


def require_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path
