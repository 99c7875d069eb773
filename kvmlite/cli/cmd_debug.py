"""``kvmlite debug``: a VM's registers and the code at RIP; NMI and sysrq injection.

With no action it dumps the registers (``--dump``).  ``--nmi`` queues an
NMI (the vCPUs are parked for it: KVM_NMI cannot reach a vCPU inside
KVM_RUN); ``--sysrq KEY`` sends a break then KEY on the serial console,
which Linux takes as a magic sysrq.
"""

from __future__ import annotations

import argparse

from kvmlite.control.cli import add_json_argument, add_target_arguments, print_json, selected_names
from kvmlite.control.client import ControlClient
from kvmlite.control.render import registers_text

ALL_VCPUS = -1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, allow_all=False)
    parser.add_argument("-d", "--dump", action="store_true", help="print registers and code (the default)")
    parser.add_argument("-m", "--nmi", nargs="?", type=_vcpu, const=ALL_VCPUS, metavar="VCPU",
                        help="inject an NMI into vCPU VCPU (default: every vCPU)")
    parser.add_argument("-s", "--sysrq", metavar="KEY", type=_key, help="send magic sysrq KEY (e.g. h, t, w)")
    add_json_argument(parser)


def _vcpu(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a vCPU number (0, 1, ...)")
    return int(text)


def _key(text: str) -> str:
    if len(text) != 1 or not "!" <= text <= "~":
        raise argparse.ArgumentTypeError(f"{text!r}: give one printable character, e.g. h")
    return text


def run(args: argparse.Namespace) -> int:
    (name,) = selected_names(args)
    dump = args.dump or (args.nmi is None and args.sysrq is None)
    with ControlClient(name) as vm:
        if dump:
            vcpus = vm.registers()
            if args.json:
                print_json(vcpus)
            else:
                print(registers_text(name, vcpus))
        if args.nmi is not None:
            done = vm.nmi(None if args.nmi == ALL_VCPUS else args.nmi)
            print(f"{name}: NMI sent to vCPU {', '.join(map(str, done))}")
        if args.sysrq is not None:
            vm.sysrq(args.sysrq)
            print(f"{name}: sysrq {args.sysrq} sent")
    return 0
