"""Run a command and report how long its output took to show a marker line.

Used inside the nested test host by bench/linux_boot.py:
``python3 bench/marker_time.py NAME MARKER -- CMD...`` prints
``BOOT name=NAME first_ms=... marker_ms=... exit_ms=... rc=...``, and
``BOOTERR name=NAME LINE`` with the command's own error line when it
exited non-zero or never showed the marker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.common import error_line


def main() -> int:
    name, marker = sys.argv[1], sys.argv[2].encode()
    cmd = sys.argv[sys.argv.index("--") + 1:]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = found = None
    buf = b""
    assert proc.stdout is not None
    while chunk := os.read(proc.stdout.fileno(), 65536):
        now = time.monotonic()
        first = first or now
        buf += chunk
        if found is None and marker in buf:
            found = now
    rc = proc.wait()
    end = time.monotonic()
    ms = lambda t: -1 if t is None else round((t - start) * 1000)  # noqa: E731
    print(f"BOOT name={name} first_ms={ms(first)} marker_ms={ms(found)} exit_ms={ms(end)} rc={rc}", flush=True)
    if rc != 0 or found is None:
        print(f"BOOTERR name={name} {error_line(buf[-4096:].decode(errors='replace'))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
