"""What kvmlite's Python costs per device request, with no guest: the unit
tests' fake driver posts requests into guest memory and the device serves
them on its event loop, as it would a real driver's.  Here (natively) and,
with ``device_cost_nested``, inside the nested test host, where the ratio
benchmarks run; the two sets together say how much the emulated test host
slows the Python down, and how much device time per request is left once
QEMU's figures of the same boot are known (BENCHMARKS.md).

* 9p metadata: a Twalk of two names, a Tgetattr and a Tclunk, repeated;
  ``p9_server_us`` is the file server alone (the messages handed to
  ``P9Server.handle`` in a loop), ``p9_device_us`` the whole device path
  the loop thread runs per request (pop, copy, decode, serve, encode,
  publish, interrupt).
* virtio-net receive: a 64 KiB TSO frame from the backend into sixteen
  4 KiB mergeable buffers (as Linux posts them); ``net_rx_us_per_frame``
  is the device's time from "the backend is readable" to the frame being
  in the used ring.

``python3 -m bench.device_cost`` prints one JSON line (the nested variant
runs exactly that).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

P9_ROUNDS = 400        # request cycles (3 requests each) per measurement
NET_FRAMES = 200
FRAME = 65000
REPEAT = 5             # measurements; the median is reported


def _median(samples: list[float]) -> float:
    return round(statistics.median(samples), 1)


def p9_costs() -> dict:
    from kvmlite.base.eventloop import EventLoop
    from kvmlite.base.memory import GuestMemory
    from kvmlite.devices.virtio.p9 import codec
    from kvmlite.devices.virtio.p9.codec import Tattach, Tclunk, Tgetattr, Tversion, Twalk
    from kvmlite.devices.virtio.p9.constants import NOFID, NONUNAME
    from kvmlite.devices.virtio.p9.server import P9Server
    from tests.unit.devices.virtio import test_virtio_9p as t
    from tests.unit.devices.virtio.fakedriver import call_on_loop

    msgs = [Twalk(0, 1, (b"dir", b"f")), Tgetattr(1, 0x7ff), Tclunk(1)]
    with tempfile.TemporaryDirectory(prefix="kvmlite-devcost-") as tmp:
        root = Path(tmp)
        (root / "dir").mkdir()
        (root / "dir" / "f").write_text("x")
        server_us, device_us = [], []
        loop = EventLoop("devcost")
        loop.start()
        harness = t.Harness(GuestMemory(t.RAM), loop, P9Server(root, max_msize=t.ROOM))
        try:
            harness.call(1, Tversion(8192, b"9P2000.L"))
            harness.call(1, Tattach(0, NOFID, b"root", b"", NONUNAME))
            raw = [codec.encode(3, m) for m in msgs]
            heap = harness.driver._heap           # each request's buffers go back to the same place
            for _ in range(REPEAT):
                t0 = time.perf_counter()
                for _ in range(P9_ROUNDS):
                    for message in raw:
                        harness.server.handle(message)
                server_us.append((time.perf_counter() - t0) / (3 * P9_ROUNDS) * 1e6)
            spent = [0.0]

            def serve() -> None:
                t0 = time.perf_counter()
                harness.device.queue_notify(0)
                spent[0] += time.perf_counter() - t0

            for _ in range(REPEAT):
                spent[0] = 0.0
                for _ in range(P9_ROUNDS):
                    for message in msgs:
                        harness.driver._heap = heap
                        harness.post(2, message, 256)
                        call_on_loop(loop, serve)
                        if not harness.replies():
                            raise RuntimeError("the 9p device did not answer a request it was notified of")
                device_us.append(spent[0] / (3 * P9_ROUNDS) * 1e6)
        finally:
            harness.close()
            loop.close()
    return {"p9_server_us": _median(server_us), "p9_device_us": _median(device_us)}


def net_rx_costs() -> dict:
    from kvmlite.base.eventloop import EventLoop
    from kvmlite.base.memory import GuestMemory
    from tests.unit.devices.virtio import test_virtio_net as t
    from tests.unit.devices.virtio.fakedriver import call_on_loop

    loop = EventLoop("devcost-net")
    loop.start()
    harness = t.NetHarness(GuestMemory(t.RAM), loop, offloads=t.OFFLOAD_FEATURES)
    frame = t.header() + t.frame(FRAME)
    per = -(-len(frame) // 4096)
    samples = []
    try:
        harness.activate()
        heap = harness.rx._heap                   # each frame's buffers go back to the same place
        for _ in range(REPEAT):
            spent = [0.0]

            def receive() -> None:
                harness.backend.feed(frame)
                t0 = time.perf_counter()
                harness.device._on_readable()
                spent[0] += time.perf_counter() - t0

            for _ in range(NET_FRAMES // REPEAT):
                harness.rx._heap = heap
                harness.post_rx(*([4096] * per))
                call_on_loop(loop, receive)
                if len(harness.received()) != 1:
                    raise RuntimeError("the frame did not arrive in the receive buffers")
            samples.append(spent[0] / (NET_FRAMES // REPEAT) * 1e6)
    finally:
        harness.close()
        loop.close()
    return {"net_rx_buffers_per_frame": per, "net_rx_us_per_frame": _median(samples)}


def measure() -> dict:
    return {**p9_costs(), **net_rx_costs()}


def run() -> dict:
    return {"what": "Python device time per request with the fake driver, natively (median of "
                    f"{REPEAT}); see bench/device_cost.py", **measure()}


if __name__ == "__main__":
    json.dump(measure(), sys.stdout)
    print()
