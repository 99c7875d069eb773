"""virtio-net on the kernel's vhost-net with a real Linux guest (issue:
``-n mode=tap,vhost=1``).

One test-host boot (its kernel has vhost_net loaded; testhost.py
HOST_MODULES) runs the default guest twice with ``-n mode=tap,vhost=1``:
on virtio-pci, where vhost signals the MSI-X vectors' irqfds, and on
virtio-mmio, where the device's loop turns vhost's call eventfd into the
interrupt.  Each time the guest pings the tap's host_ip, fetches a 4 MiB
file over HTTP from a server in the test host and uploads 1 MiB of random
bytes of its own (as hex text), and both sides' SHA-256 must agree.

That the data path really is vhost's: while the guest waits (its last
request is held by the server until the script has looked), the script
lists the kernel's ``vhost-<tid>`` worker whose tid is one of kvmlite's
threads (VHOST_SET_OWNER names it after the calling thread), the tap's
own packet counters (the kernel moved the frames) and ``kvmlite stat``,
which for the NIC says ``vhost`` instead of frame counts of its own.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shlex
import sys
from pathlib import Path

import pytest

from kvmlite.guest.setup import default_guest
from kvmlite.paths import cache_dir

from .linux import hardware_kvm, run_linux_script
from .testhost import RunResult, TestHost

pytestmark = pytest.mark.nested
TIMEOUT = 1500
TRANSPORTS = ("pci", "mmio")
HOST_IP = "192.168.33.1"          # NetConfig's default host_ip; the guest is 192.168.33.15
PORT = 8000
DOWN_BYTES = 4 << 20
UP_BYTES = 1 << 20

# Answers GET /down with the file, POST /up with the body's SHA-256 and
# length (busybox wget posts a file's text up to its first NUL: the guest
# uploads random bytes written out in hex), and
# holds GET /wait/NAME until the script creates release-NAME (at most 300 s).
SERVER = r'''
import hashlib, http.server, os, sys, time

DOWN, WORK, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/down":
            with open(DOWN, "rb") as f:
                self._reply(f.read())
        elif self.path.startswith("/wait/"):
            flag = os.path.join(WORK, "release-" + os.path.basename(self.path))
            deadline = time.monotonic() + 300
            while not os.path.exists(flag) and time.monotonic() < deadline:
                time.sleep(0.1)
            self._reply(b"released\n")
        else:
            self.send_error(404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._reply(f"{hashlib.sha256(body).hexdigest()} {len(body)}\n".encode())

    def _reply(self, data):
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
'''

GUEST = (f"ping -c 3 -W 5 {HOST_IP} && wget -q -O /tmp/down http://{HOST_IP}:{PORT}/down "
         "&& echo DOWN $(sha256sum /tmp/down) "
         f"&& head -c {UP_BYTES} /dev/urandom | od -An -tx1 -v > /tmp/up && echo UP-LOCAL $(sha256sum /tmp/up) "
         f"&& echo UP-SERVER $(wget -q -O - --post-file /tmp/up http://{HOST_IP}:{PORT}/up) "
         f"&& echo TRANSFER-DONE && wget -q -O /dev/null http://{HOST_IP}:{PORT}/wait/@T@")

# $1: the transport.  kvmlite runs in the background; once the guest has
# moved its files (and waits for the server), the script looks at the
# kernel's threads, the tap's counters and kvmlite stat, then lets it end.
RUN = r'''
vhost_run() {
    t=$1
    rm -f "$W/release-$t" "$W/$t.out"     # a stale TRANSFER-DONE (an earlier run) must not end the wait early
    $KVMLITE run --name vh-$t --virtio-transport $t -n mode=tap,vhost=1 -- "$(echo "$GUEST" | sed "s/@T@/$t/")" \
        > "$W/$t.out" 2>&1 &
    k=$!
    n=0
    until grep -q TRANSFER-DONE "$W/$t.out" 2>/dev/null; do
        kill -0 $k 2>/dev/null || break
        n=$((n + 1)); [ $n -lt 3000 ] || break
        sleep 0.2
    done
    echo "KVMLITE-TIDS $(ls /proc/$k/task 2>/dev/null | tr '\n' ' ')"
    for c in /proc/[0-9]*/comm /proc/$k/task/*/comm; do
        read -r name < "$c" 2>/dev/null || continue
        case "$name" in vhost-*) echo "WORKER $name" ;; esac
    done
    for tap in /sys/class/net/kvmlite*; do
        [ -e "$tap" ] && echo "TAP $(basename $tap) rx=$(cat $tap/statistics/rx_packets) tx=$(cat $tap/statistics/tx_packets)"
    done
    echo "STAT $($KVMLITE stat --name vh-$t --json | tr -d '\n')"
    touch "$W/release-$t"
    wait $k
    rc=$?
    cat "$W/$t.out"
    return $rc
}
'''


def _script(work: Path) -> str:
    cache_home = shlex.quote(str(cache_dir().parent))
    py = shlex.quote(sys.executable)
    return f"""
export XDG_CACHE_HOME={cache_home}
W={shlex.quote(str(work))}
GUEST={shlex.quote(GUEST)}
printf '%s' {shlex.quote(SERVER)} > "$W/server.py"
{py} "$W/server.py" "$W/down.bin" "$W" {PORT} &
SERVER=$!
{RUN}
section vhost-dev sh -c 'ls -l /dev/vhost-net && grep -w vhost_net /proc/modules'
retried_section vhost-pci vhost_run pci
retried_section vhost-mmio vhost_run mmio
kill $SERVER
"""


@pytest.fixture(scope="module")
def vhost_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, str]:
    if default_guest() is None:
        from kvmlite.errors import KvmliteError
        from kvmlite.guest.setup import setup_default_guest

        try:
            setup_default_guest()
        except KvmliteError as exc:
            pytest.skip(f"cannot prepare the default guest: {exc}")
    host: TestHost | None = None if hardware_kvm() else request.getfixturevalue("testhost")
    work = tmp_path_factory.mktemp("vhost-net")
    down = random.Random(20261202).randbytes(DOWN_BYTES)
    (work / "down.bin").write_bytes(down)
    result = run_linux_script(host, _script(work), TIMEOUT, work)
    assert not result.timed_out, f"timed out after {TIMEOUT} s; {result.where()}"
    return result, hashlib.sha256(down).hexdigest()


def _section(runs: tuple[RunResult, str], transport: str) -> tuple[str, str]:
    result, _ = runs
    rc_dev, dev = result.section("vhost-dev")
    assert rc_dev == 0, f"the test host has no /dev/vhost-net (vhost_net not loaded?): {dev}; {result.where()}"
    rc, out = result.section(f"vhost-{transport}")
    assert rc == 0, f"kvmlite or the guest failed (rc={rc}): {out[-3000:]}; {result.where()}"
    return out, result.where()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_vhost_net_guest_pings_the_tap_host_ip(vhost_runs: tuple[RunResult, str], transport: str) -> None:
    out, where = _section(vhost_runs, transport)
    assert re.search(r"3 packets transmitted, 3 packets received", out), f"{out[-3000:]}; {where}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_vhost_net_files_cross_with_matching_checksums(vhost_runs: tuple[RunResult, str], transport: str) -> None:
    out, where = _section(vhost_runs, transport)
    expected = vhost_runs[1]
    down = re.search(r"^DOWN ([0-9a-f]{64})", out, re.M)
    assert down and down.group(1) == expected, f"download: {out[-3000:]}; {where}"
    local = re.search(r"^UP-LOCAL ([0-9a-f]{64})", out, re.M)
    server = re.search(r"^UP-SERVER ([0-9a-f]{64})", out, re.M)
    assert local and server and local.group(1) == server.group(1), f"upload: {out[-3000:]}; {where}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_vhost_net_data_path_is_the_kernels(vhost_runs: tuple[RunResult, str], transport: str) -> None:
    out, where = _section(vhost_runs, transport)
    tids = set(re.search(r"^KVMLITE-TIDS (.*)$", out, re.M).group(1).split())
    workers = re.findall(r"^WORKER vhost-(\d+)$", out, re.M)
    assert tids & set(workers), f"no vhost worker of kvmlite's (tids {sorted(tids)}, workers {workers}); {where}"
    tap = re.search(r"^TAP \S+ rx=(\d+) tx=(\d+)$", out, re.M)
    assert tap and int(tap.group(1)) > 10 and int(tap.group(2)) > 10, f"tap counters: {out[-3000:]}; {where}"
    stat = json.loads(re.search(r"^STAT (.*)$", out, re.M).group(1))
    assert stat["devices"]["virtio-net0"] == {"vhost": 1}, f"{stat}; {where}"
