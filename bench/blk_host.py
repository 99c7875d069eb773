"""virtio-blk's host-side cost per request, with no guest: a diagnostic.

A driver thread in the benchmark process plays the guest.  It lays out a
split virtqueue in a real ``GuestMemory``, keeps ``qd`` requests in flight
(indirect tables laid out as Linux writes them), notifies through an
eventfd served by kvmlite's own event loop (as an ioeventfd would be) when
the event index asks for it, and waits for the device's interrupt on
another eventfd (as KVM's irqfd would deliver it).  The device is the real
``VirtioBlock`` over a raw image in /dev/shm, so every copy is real.

Reported per scenario: requests per second and the CPU time the device
side spent per request (the whole process's user and system time, less
the driver thread's own), which is what a request costs the host whatever
the guest.  There is no QEMU figure to compare with: this measures kvmlite
against itself, change by change (BENCHMARKS.md).

    python3 -m bench.blk_host            # every scenario, JSON on stdout
"""

from __future__ import annotations

import inspect
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

from bench.common import REPO

SCENARIOS = {   # name: (write, qd, buffers per request, buffer size, requests)
    "read-1MiB-linux": (False, 8, 254, 4096, 6000),
    "read-1MiB-4seg": (False, 8, 4, 256 << 10, 6000),    # the nested guest's: its pages mostly contiguous
    "write-1MiB-linux": (True, 8, 254, 4096, 6000),
    "read-4KiB": (False, 32, 1, 4096, 60000),
    "write-4KiB": (True, 32, 1, 4096, 60000),
}
IMAGE = 256 << 20
QUEUE = 256
DESC_TABLE, AVAIL, USED = 0x1000, 0x2000, 0x3000


def run() -> dict:
    results: dict = {"what": "virtio-blk with no guest: a driver thread keeps qd requests in flight through "
                             "the real device, event loop and eventfds; CPU = device side per request"}
    for name in SCENARIOS:
        out = subprocess.run([sys.executable, "-m", "bench.blk_host", name], cwd=REPO, check=True,
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        results[name] = json.loads(out.stdout)
    return results


def scenario(write: bool, qd: int, buffers: int, size: int, requests: int) -> dict:
    from kvmlite.devices.virtio.block import VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VirtioBlock
    from kvmlite.devices.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1
    from kvmlite.devices.virtio.disk import RawDisk
    from kvmlite.devices.virtio.queue import (VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, Queue,
                                              vring_need_event)
    from kvmlite.base.eventloop import EventLoop
    try:    # the interrupt path's own eventfd calls (the interrupt stands in for the transport's)
        from kvmlite.base.eventfd import drain, signal
    except ImportError:     # an older kvmlite, for a before/after comparison
        def signal(fd: int) -> None:
            os.eventfd_write(fd, 1)

        def drain(fd: int) -> bool:
            try:
                return bool(os.eventfd_read(fd))
            except BlockingIOError:
                return False
    from kvmlite.base.memory import GuestMemory

    desc = struct.Struct("<QIHH")
    memory = GuestMemory(512 << 20)
    queue = Queue(QUEUE)
    queue.size, queue.desc_table, queue.avail_ring, queue.used_ring, queue.ready = QUEUE, DESC_TABLE, AVAIL, USED, True
    avail_event, used_event = USED + 4 + 8 * QUEUE, AVAIL + 4 + 2 * QUEUE
    with tempfile.NamedTemporaryFile(dir="/dev/shm") as image:
        image.write(os.urandom(1 << 20) * (IMAGE >> 20))
        image.flush()
        loop = EventLoop()
        loop.start()
        # io_uring completions are reaped on the same loop, as in a VM (a
        # checkout whose device takes no loop runs without).
        takes_loop = "loop" in inspect.signature(VirtioBlock).parameters
        device = VirtioBlock(RawDisk.open(image.name), **({"loop": loop} if takes_loop else {}))
        irq = os.eventfd(0, os.EFD_CLOEXEC)
        bell = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

        class Interrupt:
            def signal_used_queue(self, index: int) -> None:
                signal(irq)

            def signal_config_change(self) -> None:
                pass

        loop.add_reader(bell, lambda: drain(bell) and device.queue_notify(0))
        span = buffers * size
        data_flag = 0 if write else VIRTQ_DESC_F_WRITE
        for r in range(qd):             # request r: head descriptor r, its own table, header, status, data
            header, table = 0x10000 + 256 * r, 0x100000 + 0x1000 * r
            data = 0x1000000 + r * 2 * ((span * 2 + 0xFFFFF) & ~0xFFFFF)
            sector = (r * 4 * span // 512) % ((IMAGE - span) // 512)
            memory.write(header, struct.pack("<IIQ", VIRTIO_BLK_T_OUT if write else VIRTIO_BLK_T_IN, 0, sector))
            memory.write(table, desc.pack(header, 16, VIRTQ_DESC_F_NEXT, 1))
            for i in range(buffers):    # every other page, as scattered as Linux's
                memory.write(table + 16 * (i + 1), desc.pack(data + 2 * size * i, size, VIRTQ_DESC_F_NEXT | data_flag,
                                                            i + 2))
            memory.write(table + 16 * (buffers + 1), desc.pack(header + 128, 1, VIRTQ_DESC_F_WRITE, 0))
            memory.write(DESC_TABLE + 16 * r, desc.pack(table, 16 * (buffers + 2), VIRTQ_DESC_F_INDIRECT, 0))
        device.activate(memory, [queue], VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX,
                        Interrupt())
        state = {"avail": 0, "notifies": 0}

        def submit(heads: list[int]) -> None:
            old = state["avail"]
            for head in heads:
                memory.write_u16(AVAIL + 4 + 2 * (state["avail"] % QUEUE), head)
                state["avail"] = (state["avail"] + 1) & 0xFFFF
            memory.write_u16(AVAIL + 2, state["avail"])
            if vring_need_event(memory.read_u16(avail_event), state["avail"], old):
                state["notifies"] += 1
                signal(bell)

        seen = done = interrupts = 0
        start, cpu0, own0 = time.perf_counter(), os.times(), time.thread_time()
        submit(list(range(qd)))
        while done < requests:
            os.eventfd_read(irq)
            interrupts += 1
            while True:
                heads = []
                while seen != memory.read_u16(USED + 2):
                    heads.append(memory.read_u32(USED + 4 + 8 * (seen % QUEUE)))
                    seen = (seen + 1) & 0xFFFF
                done += len(heads)
                memory.write_u16(used_event, seen)
                if heads:
                    submit(heads)
                if memory.read_u16(USED + 2) == seen:
                    break
        elapsed, cpu1, own1 = time.perf_counter() - start, os.times(), time.thread_time()
        loop.close()
        device.close()
    user, system = cpu1.user - cpu0.user, cpu1.system - cpu0.system
    return {"requests_per_s": round(done / elapsed), "cpu_us_per_request": round((user + system - (own1 - own0))
                                                                                  / done * 1e6, 1),
            "user_us": round(user / done * 1e6, 1), "system_us": round(system / done * 1e6, 1),
            "notifications_per_request": round(state["notifies"] / done, 3),
            "interrupts_per_request": round(interrupts / done, 3), "requests": done}


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(scenario(*SCENARIOS[sys.argv[1]])))
    else:
        print(json.dumps(run(), indent=2))
