"""``kvmlite run``: start a VM and attach the terminal to its console.

Option names follow kvmtool's ``lkvm run``.  With no kernel the default
guest prepared by ``kvmlite setup`` boots; ``kvmlite run -- CMD ARGS``
runs CMD in it and exits with CMD's status.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from typing import Callable

from kvmlite import log
from kvmlite.control.cli import seconds
from kvmlite.errors import ConfigError, UsageError
from kvmlite.vmm.config import (CONSOLES, MAX_TIMEOUT, SHARE_DEFAULT_TAG, TRANSPORTS, DiskConfig, NetConfig, ShareConfig,
                                VmConfig, VsockConfig, parse_mem_mib)

EPILOG = """exit status: 0 guest powered off, 1 kvmlite failed, 2 bad usage, 3 guest reset,
4 guest crashed, N the guest's own status (kvmlite run -- CMD, or a write to port 0x501).
Console escape: Ctrl-A x quits, Ctrl-A h for help."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    g = parser.add_argument_group("basic options")
    g.add_argument("--name", help="a name for the guest (default: generated)")
    g.add_argument("-c", "--cpus", type=int, default=1, metavar="N", help="number of vCPUs (default 1)")
    g.add_argument("-m", "--mem", default="256", metavar="SIZE",
                   help="guest memory in MiB, or with a K/M/G suffix (default 256)")
    g.add_argument("-d", "--disk", action="append", default=[], metavar="PATH[,ro]",
                   help="a raw disk image; repeat for more disks; ',ro' makes it read-only")
    g.add_argument("--9p", dest="shares", action="append", default=[], metavar="DIR[,TAG][,ro]",
                   help="share the host directory DIR with the guest over virtio-9p under the mount tag TAG "
                        f"(default {SHARE_DEFAULT_TAG}; letters, digits, '_', '.', '-', at most 31); ',ro' makes "
                        "it read-only; repeat for more, each with its own tag.  The default guest mounts each "
                        "at /mnt/TAG; another guest: mount -t 9p -o trans=virtio,version=9p2000.L TAG MOUNTPOINT")
    g.add_argument("--rng", action="store_true", help="add a virtio-rng device (host getrandom)")
    g.add_argument("--vsock", metavar="CID[,socket=PATH][,trans=pci|mmio]",
                   help="add a virtio-vsock device; the guest's context ID is CID (3..4294967294).  Host programs "
                        "connect to the Unix socket PATH (default: $XDG_RUNTIME_DIR/kvmlite/NAME.d/vsock.sock, NAME "
                        "being --name or guest-PID) and write 'CONNECT PORT\\n' to reach guest port PORT; the guest "
                        "reaches host port P at PATH_P (docs/vsock.md)")
    g.add_argument("--console", choices=CONSOLES, default="serial",
                   help="guest console: serial (ttyS0, default) or virtio (hvc0)")
    g.add_argument("--virtio-transport", choices=TRANSPORTS, default="pci",
                   help="virtio transport: pci (default) or mmio")
    g.add_argument("--timeout", type=seconds(MAX_TIMEOUT), metavar="SECONDS",
                   help="stop the VM after SECONDS (E2B's sandbox timeout; 'kvmlite' control op set_timeout "
                        "moves it)")
    g.add_argument("--hugepages", action="store_true", help="back guest memory with hugetlbfs pages")
    g.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label shown by 'kvmlite list' and Sandbox.list() (the SDK's metadata); repeatable")
    n = parser.add_argument_group("networking options")
    n.add_argument("-n", "--network", action="append", default=[], metavar="OPTIONS",
                   help="a virtio-net NIC; repeat for more: mode=tap|user|none[,tapif=NAME][,guest_mac=MAC]"
                        "[,host_ip=IP][,guest_ip=IP][,vhost=1][,script=PATH][,trans=pci|mmio]"
                        "[,hostfwd=tcp:HOSTPORT-GUESTPORT]... An -n without mode= is a tap with host "
                        "192.168.33.1 and guest 192.168.33.15; user mode (NAT, DHCP, DNS) runs passt. "
                        "With no -n the default guest gets one user-mode NIC when passt is installed; "
                        "-n mode=none gives none")
    k = parser.add_argument_group("kernel options")
    k.add_argument("-k", "--kernel", help="kernel image: bzImage or ELF vmlinux with a PVH note "
                                          "(default: the guest prepared by 'kvmlite setup')")
    k.add_argument("-i", "--initrd", help="initial ramdisk")
    k.add_argument("-p", "--params", default="", help="kernel command-line parameters, appended to the defaults")
    k.add_argument("--no-default-params", action="store_true",
                   help="use -p as the whole command line (no console=, no device options)")
    r = parser.add_argument_group("snapshot options")
    r.add_argument("--restore", metavar="DIR",
                   help="start the VM saved in DIR by 'kvmlite snapshot' instead of booting; only --name, "
                        "--disk (one per saved disk, e.g. a copy for a clone), --timeout and --label may be "
                        "given with it")
    d = parser.add_argument_group("debug options")
    d.add_argument("--loglevel", choices=log.LEVELS, default="warning", help="kvmlite's own messages")
    parser.add_argument("image", nargs="?", help="kernel image (same as -k)")
    parser.usage = "kvmlite run [options] [IMAGE] [-- CMD [ARGS...]]"


def _split_command(args: argparse.Namespace) -> list[str]:
    """``-- CMD ARGS``: run CMD in the default guest's init, exit with its status."""
    command = list(getattr(args, "passthrough", None) or [])
    if getattr(args, "passthrough", None) is not None and not command:
        raise UsageError("nothing after '--': give the command to run in the guest")
    return command


def _nics(options: list[str], default_guest: bool) -> tuple[NetConfig, ...]:
    """lkvm's rules: each -n is a NIC, ``mode=none`` ones are dropped; with
    no -n at all the default guest gets one user-mode NIC (``implicit``:
    left out, with a warning, when passt cannot run)."""
    if not options:
        return (NetConfig(mode="user", implicit=True),) if default_guest else ()
    nics = tuple(NetConfig.parse(text) for text in options)
    return tuple(nic for nic in nics if nic.mode != "none")


def config_from_args(args: argparse.Namespace, need_shares: bool = False) -> VmConfig:
    """Turn parsed options into a frozen VmConfig (no side effects);
    ``need_shares``: the default guest must be one that mounts shares."""
    if args.kernel and args.image:
        raise UsageError(f"two kernels given: -k {args.kernel} and {args.image}")
    kernel, initrd = args.kernel or args.image, args.initrd
    command = _split_command(args)
    params = args.params
    if kernel is None:
        from kvmlite.guest.setup import default_guest

        # Shares need a guest kernel with 9p (setup prepares one when the default lacks it).
        shares = need_shares or bool(args.shares)
        guest = default_guest(shares=shares)
        if guest is None:
            what = "default guest that can mount shares" if shares else "default guest"
            raise ConfigError(f"no kernel given and no {what} prepared: run 'kvmlite setup' first, "
                              "or pass -k KERNEL")
        kernel, initrd = str(guest.kernel), initrd or str(guest.initrd)
    if command:
        from kvmlite.guest.cmdline import encode_command

        # One argument is a shell command line (as with ssh); several are an argv.
        line = command[0] if len(command) == 1 else shlex.join(command)
        params = f"{params} {encode_command(line)}".strip()
    return VmConfig(
        kernel=kernel, initrd=initrd, params=params, mem_mib=parse_mem_mib(args.mem), cpus=args.cpus,
        nics=_nics(args.network, default_guest=args.kernel is None and args.image is None),
        name=args.name, console=args.console, disks=tuple(DiskConfig.parse(d) for d in args.disk),
        shares=tuple(ShareConfig.parse(s) for s in args.shares),
        vsock=VsockConfig.parse(args.vsock) if args.vsock is not None else None,
        rng=args.rng, virtio_transport=args.virtio_transport, hugepages=args.hugepages,
        default_cmdline=not args.no_default_params, timeout=args.timeout,
        labels=tuple(parse_label(text) for text in args.label))


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--label {text!r}: write KEY=VALUE")
    if key.startswith("kvmlite."):
        raise UsageError(f"--label {text!r}: keys starting with 'kvmlite.' are kvmlite's own")
    return key, value


# Options that --restore takes from the snapshot instead: (dest, default).
_FROM_SNAPSHOT = (("kernel", None), ("image", None), ("initrd", None), ("params", ""), ("cpus", 1), ("mem", "256"),
                  ("shares", []), ("rng", False), ("vsock", None), ("console", "serial"), ("network", []),
                  ("virtio_transport", "pci"), ("hugepages", False), ("no_default_params", False))


def run(args: argparse.Namespace) -> int:
    log.setup(args.loglevel)
    if args.restore is not None:
        return run_restored(args)
    return run_vm(config_from_args(args))


def run_restored(args: argparse.Namespace) -> int:
    """``--restore DIR``: the saved VM, with this run's name, disks and timeout."""
    from kvmlite.vmm.vm import Vm

    given = [dest for dest, default in _FROM_SNAPSHOT if getattr(args, dest, default) != default]
    if given or _split_command(args):
        what = given[0].replace("_", "-") if given else "a command"
        raise UsageError(f"--restore: {what} comes from the snapshot; only --name, --disk, --timeout and --label "
                         "may be given")
    labels = [parse_label(text) for text in args.label] if args.label else None
    return run_vm(None, make_vm=lambda sink: Vm.restore(args.restore, name=args.name, disks=args.disk or None,
                                                        timeout=args.timeout, labels=labels, console_output=sink))


def run_vm(config: VmConfig | None, wrap_output: Callable[[Callable[[bytes], None]], Callable[[bytes], None]] | None = None,
           make_vm: "Callable[[Callable[[bytes], None]], Vm] | None" = None) -> int:
    """Run ``config`` (or the VM ``make_vm`` builds) on this terminal until
    the guest ends; its exit status.  ``wrap_output`` may put a filter in
    front of the console's output."""
    from kvmlite.vmm.session import ConsoleSession
    from kvmlite.vmm.vm import Vm

    from kvmlite.control.server import ControlServer

    sink = ConsoleSession.output_sink()
    output = wrap_output(sink) if wrap_output else sink
    vm = make_vm(output) if make_vm is not None else Vm(config, console_output=output)
    control = ControlServer.for_vm(vm)
    try:
        control.start()            # claims the name; a one-line error if it is in use
        with ConsoleSession(vm, sys.stdin) as session:
            for signum in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, lambda *_: vm.stop())
            vm.start()
            result = session.wait()
    finally:
        control.close()            # in-flight replies go out, the name is freed
        vm.close()
    if result.exit_code not in (0,) and result.reason.value in ("crash", "error"):
        print(f"kvmlite: error: {result.message}", file=sys.stderr)
    elif result.reason.value == "reset":
        print(f"kvmlite: {result.message}", file=sys.stderr)
    return result.exit_code
