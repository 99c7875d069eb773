"""``kvmlite setup``: prepare the default guest, or build a root disk image.

    kvmlite setup [--kernel-source auto|host|debian] [--force]
    kvmlite setup --rootfs DIR --image FILE [--size SIZE]

See docs/guest.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvmlite.errors import UsageError
from kvmlite.guest import rootfs
from kvmlite.guest.progress import Progress
from kvmlite.guest.setup import SOURCES, SetupOptions, SetupResult, setup_default_guest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernel-source", choices=SOURCES, default="auto",
                        help="host: /boot/vmlinuz-$(uname -r); debian: linux-image-cloud-amd64; "
                             "auto (default): host when readable, else debian")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--rootfs", metavar="DIR", type=Path,
                        help="build an ext4 disk image from DIR instead (with --image)")
    parser.add_argument("--image", metavar="FILE", type=Path, help="the disk image to write")
    parser.add_argument("--size", metavar="SIZE", help="image size, e.g. 512M or 2G (default: fits DIR)")


def run(args: argparse.Namespace) -> int:
    if args.rootfs is not None or args.image is not None or args.size is not None:
        return _run_rootfs(args)
    result = setup_default_guest(SetupOptions(kernel_source=args.kernel_source, force=args.force), Progress())
    _report("default guest", result)
    if result.share_guest is not None:
        _report("guest for shares (--9p, sandbox)", result.share_guest)
    elif result.share_error:
        print(f"kvmlite: warning: no guest can mount shares (--9p, sandbox): {result.share_error}", file=sys.stderr)
    return 0


def _report(what: str, result: "SetupResult") -> None:
    if result.rebuilt:
        print(f"{what} ready: {result.directory} (kernel {result.guest.version})")
    else:
        print(f"{what} is up to date: {result.directory}")


def _run_rootfs(args: argparse.Namespace) -> int:
    if args.rootfs is None or args.image is None:
        raise UsageError("--rootfs DIR and --image FILE go together")
    size = rootfs.parse_size(args.size) if args.size is not None else None
    image = rootfs.build_image(args.rootfs, args.image, size)
    print(f"root disk image ready: {image}")
    return 0
