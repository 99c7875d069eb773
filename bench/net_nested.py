"""virtio-net throughput and round-trip time seen by a real Linux guest, in
the nested test host.

kvmlite and QEMU (``-M pc``, ``virtio-net-pci``) boot the same Debian cloud
kernel and default-guest initramfs in one test-host boot; a second disk
holds iperf3 with its libraries (the host's Debian ``iperf3``, run through
its dynamic loader).  The iperf3 server runs in the test host; in the guest
``iperf3 -c`` measures TCP from the guest to the test host ("up") and with
``-R`` from the test host to the guest ("down"), and busybox ``ping``
measures the round-trip time.  Cases, each kvmlite against its QEMU twin:

* ``tap``: one tap, ``qtap0`` with 192.168.33.1/24, made by the script and
  used by both (kvmlite ``-n mode=tap,tapif=qtap0``, QEMU ``-netdev
  tap,ifname=qtap0,vhost=off``); the guest has 192.168.33.15;
* ``vhost``: the same with ``vhost=1`` / ``vhost=on`` (when the test host
  has /dev/vhost-net);
* ``user``: kvmlite ``-n mode=user`` (passt) against QEMU ``-netdev user``
  (slirp) and against QEMU ``-netdev stream`` connected to a passt the
  script starts (``passt -f -q -1``, as kvmlite starts it).  The guest takes
  an address by DHCP and reaches the server through its gateway (passt maps
  it to the test host's loopback; slirp's is 10.0.2.2).

Everything runs in a network namespace of its own with a veth pair that
gives passt its default route (as tests/nested/test_network.py does): no
packet leaves the test host.  kvmlite and QEMU alternate ``ROUNDS`` times
and the median of each is reported.  Absolute numbers are low (the test
host runs under TCG); only the ratios mean anything.
"""

from __future__ import annotations

import base64
import re
import shlex
import tempfile
from pathlib import Path

from bench.common import console_error, keep_console, tools_image, number_or_failure, ratio

ROUNDS = 2
SECONDS = 5                 # iperf3 -t, after a 1 s warm-up it leaves out (-O 1)
PINGS = 20
TAP = "qtap0"
TAP_HOST, TAP_GUEST = "192.168.33.1", "192.168.33.15"
TAP_NET = f"{TAP_GUEST}/24,{TAP_HOST}"
PASST_SOCKET = "/tmp/kvmlite-bench-passt.socket"

# case -> (kvmlite's -n, [(baseline name, QEMU -netdev)], the guest's network, the server address)
CASES: dict[str, tuple[str, list[tuple[str, str]], str, str]] = {
    "tap": (f"mode=tap,tapif={TAP}", [("qemu", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off")],
            TAP_NET, TAP_HOST),
    "vhost": (f"mode=tap,tapif={TAP},vhost=1",
              [("qemu", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=on")], TAP_NET, TAP_HOST),
    "user": ("mode=user", [("qemu", "user,id=n0"),
                           ("qemu_passt", f"stream,id=n0,server=off,addr.type=unix,addr.path={PASST_SOCKET}")],
             "dhcp", "gateway"),
}
METRICS = ("up_mbits", "down_mbits", "rtt_ms")
RESULT = re.compile(r"^@@NET (\S+) (\S+) (\S+) (\S+)$", re.M)


def build_tools(work: Path) -> Path:
    """An ext4 image holding iperf3, the libraries it links and their loader."""
    return tools_image(work, ["iperf3"], "32M")


def guest_command(case: str, server: str) -> str:
    """The guest's part: RTT, then TCP up and down; each result on a line
    ``@@NET <vmm> <case> <metric> <value>`` ($VMM is set by the caller)."""
    if server == "gateway":
        server = "$(ip route | awk '/^default/ { print $3 }')"
    iperf = "/mnt/ld-linux-x86-64.so.2 --library-path /mnt /mnt/iperf3"
    rx = "awk '/receiver/ { for (i = 1; i < NF; i++) if ($(i+1) == \"Mbits/sec\") print $i }'"
    emit = f'echo "@@NET $VMM {case}'
    return (f"mount -o ro /dev/vda /mnt; S={server}; "
            f"r=$(ping -q -c {PINGS} -i 0.2 $S | sed -n 's|.*= [0-9.]*/\\([0-9.]*\\)/.*|\\1|p'); "
            f'{emit} rtt_ms ${{r:-failed}}"; '
            f"u=$(timeout {SECONDS + 30} {iperf} -c $S -t {SECONDS} -O 1 -f m 2>&1 | tee /tmp/up | {rx}); "
            f'[ -n "$u" ] || cat /tmp/up; {emit} up_mbits ${{u:-failed}}"; '
            f"d=$(timeout {SECONDS + 30} {iperf} -c $S -t {SECONDS} -O 1 -f m -R 2>&1 | tee /tmp/down | {rx}); "
            f'[ -n "$d" ] || cat /tmp/down; {emit} down_mbits ${{d:-failed}}"')


def kvmlite_line(case: str, tools: Path) -> str:
    net, _, guest_net, server = CASES[case]
    cmd = "VMM=kvmlite; " + guest_command(case, server)
    return (f"timeout 200 $KVMLITE run -k \"$KERNEL\" -i \"$INITRD\" -m 512 -p quiet -d {tools},ro -n {net} "
            f"-- {shlex.quote(cmd)} </dev/null 2>&1 | tee -a kvmlite-{case}.log")


def qemu_line(case: str, vmm: str, netdev: str, tools: Path) -> str:
    _, _, guest_net, server = CASES[case]
    b64 = base64.b64encode((f"VMM={vmm}; " + guest_command(case, server)).encode()).decode()
    qemu = ("timeout 200 qemu-system-x86_64 -enable-kvm -M pc -cpu host -m 512 -smp 1 -display none "
            "-serial stdio -monitor none -no-reboot -nodefaults "
            f"-kernel \"$KERNEL\" -initrd \"$INITRD\" "
            f"-append 'console=ttyS0 quiet panic=-1 kvmlite.net={guest_net} kvmlite.cmd={b64}' "
            "-device isa-debug-exit,iobase=0x501,iosize=1 "
            f"-drive file={tools},if=none,id=d1,format=raw,readonly=on -device virtio-blk-pci,drive=d1 "
            f"-netdev {netdev} -device virtio-net-pci,netdev=n0 </dev/null 2>&1 | tee -a {vmm}-{case}.log")
    if vmm != "qemu_passt":
        return qemu
    return (f"rm -f {PASST_SOCKET}; passt -f -q -1 -s {PASST_SOCKET} >passt.log 2>&1 & "
            f"for i in $(seq 50); do [ -S {PASST_SOCKET} ] && break; sleep 0.1; done; {qemu}; wait")


def script(tools: Path) -> str:
    runs = []
    for case, (_, baselines, _, _) in CASES.items():
        block = []
        for _ in range(ROUNDS):
            block.append(kvmlite_line(case, tools))
            block.extend(qemu_line(case, vmm, netdev, tools) for vmm, netdev in baselines)
        body = "\n".join(block)
        runs.append(f"if [ -c /dev/vhost-net ]; then\n{body}\nelse echo '@@NOVHOST'; fi" if case == "vhost" else body)
    return f"""
# A network namespace of its own: nothing here reaches the machine's network.
[ -n "$KVMLITE_NETNS" ] || exec env KVMLITE_NETNS=1 unshare --net /bin/sh "$0"
ip link set lo up
sysctl -q -w net.ipv4.ping_group_range="0 2147483647"   # ping sockets for passt, which runs as nobody
ip link add veth0 type veth peer name veth1
ip addr add 10.77.0.1/24 dev veth0
ip link set veth0 up && ip link set veth1 up
ip route add default via 10.77.0.2 dev veth0
ip tuntap add {TAP} mode tap
ip addr add {TAP_HOST}/24 dev {TAP}
ip link set {TAP} up
iperf3 -s >"$PWD/iperf-server.log" 2>&1 &
for i in $(seq 50); do grep -q listening "$PWD/iperf-server.log" && break; sleep 0.1; done
{chr(10).join(runs)}
"""


def parse(console: str) -> dict:
    console = console.replace("\r", "")
    found: dict[tuple[str, str, str], list[float]] = {}
    for vmm, case, metric, value in RESULT.findall(console):
        try:
            found.setdefault((vmm, case, metric), []).append(float(value))
        except ValueError:
            found.setdefault((vmm, case, metric), [])
    out: dict = {}
    for case, (_, baselines, _, _) in CASES.items():
        row: dict = {}
        for vmm in ["kvmlite", *(name for name, _ in baselines)]:
            for metric in METRICS:
                values = found.get((vmm, case, metric), [])
                row[f"{vmm}_{metric}"] = number_or_failure(values, [vmm_error(console, vmm, case)])
        for vmm, _ in baselines:
            for metric in METRICS:
                ours, theirs = row[f"kvmlite_{metric}"], row[f"{vmm}_{metric}"]
                # a shorter round trip is better: the ratio is theirs / ours for every metric's "≥ 1 is good"
                row[f"ratio_{vmm}_{metric}"] = (ratio(theirs, ours) if metric == "rtt_ms" and not
                                                isinstance(ours, str) and not isinstance(theirs, str)
                                                else ratio(ours, theirs))
        out[case] = row
    if "@@NOVHOST" in console:
        out["vhost"] = "not run: the test host has no /dev/vhost-net"
    return out


def vmm_error(console: str, vmm: str, case: str) -> str:
    """Why a VMM gave no number: its own error line, else a pointer to the log."""
    found = console_error(console, vmm)
    if found:
        return found
    if f"@@NET {vmm} {case}" in console:
        return "the guest's tool printed no number (see the console log)"
    return f"{vmm} printed no result and no error line"


def run() -> dict:
    from tests.nested.testhost import TestHost

    host = TestHost.prepare()
    guest = host.files.guest
    with tempfile.TemporaryDirectory(prefix="kvmlite-netbench-") as tmp:
        work = Path(tmp)
        tools = build_tools(work)
        from tests.nested.linux import script_env
        result = host.run(script_env(guest.kernel, guest.initrd) + script(tools), 3600, work)
        keep_console("net_nested", result.console)
        numbers = parse(result.console)
        return {"what": f"virtio-net in a Linux guest, nested test host: iperf3 TCP {SECONDS} s each way "
                        f"(Mbit/s), ping RTT (ms, ratio = QEMU/kvmlite), median of {ROUNDS}",
                **numbers}
