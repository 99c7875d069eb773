"""``kvmlite setup``: prepare the default guest, or build a root disk image.

    kvmlite setup [--kernel-source auto|host|debian] [--force]
    kvmlite setup --rootfs DIR --image FILE [--size SIZE]

See docs/guest.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kvmlite.errors import UsageError
from kvmlite.guest import rootfs
from kvmlite.guest.progress import Progress
from kvmlite.guest.setup import SOURCES, SetupOptions, setup_default_guest


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
    if not result.rebuilt:
        print(f"default guest is up to date: {result.directory}")
        return 0
    print(f"default guest ready: {result.directory} (kernel {result.guest.version})")
    return 0


def _run_rootfs(args: argparse.Namespace) -> int:
    if args.rootfs is None or args.image is None:
        raise UsageError("--rootfs DIR and --image FILE go together")
    size = rootfs.parse_size(args.size) if args.size is not None else None
    image = rootfs.build_image(args.rootfs, args.image, size)
    print(f"root disk image ready: {image}")
    return 0
