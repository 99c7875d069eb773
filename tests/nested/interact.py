"""Drive an interactive console like a person would: wait for text, then type.

Run inside the test host (or directly) by the real-Linux tests::

    python3 tests/nested/interact.py --expect '# ' --send 'echo hi' --expect hi --send 'exit 3' -- CMD...

Each --expect waits (up to --timeout seconds) for its text in CMD's output
since the previous expectation; each --send writes a line to CMD's stdin.
CMD's output is copied to stdout; the exit status is CMD's, or 124 when an
expectation timed out (CMD is then killed).
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import time


class _Step(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        namespace.steps.append((self.dest, values))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.set_defaults(steps=[])
    parser.add_argument("--expect", action=_Step)
    parser.add_argument("--send", action=_Step)
    parser.add_argument("--timeout", type=float, default=120.0)
    argv = sys.argv[1:]
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    proc = subprocess.Popen(argv[split + 1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    out_fd, seen, mark = proc.stdout.fileno(), b"", 0
    for kind, value in args.steps:
        if kind == "send":
            proc.stdin.write(value.encode() + b"\n")
            proc.stdin.flush()
            continue
        deadline = time.monotonic() + args.timeout
        while value.encode() not in seen[mark:]:
            ready, _, _ = select.select([out_fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(out_fd, 65536) if ready else b""
            if not chunk:
                why = "before CMD's output ended" if ready else f"within {args.timeout:.0f} s"
                print(f"\ninteract: no {value!r} {why}", flush=True)
                proc.kill()
                proc.wait()
                return 124
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            seen += chunk
        mark = seen.index(value.encode(), mark) + len(value)
    proc.stdin.close()
    while chunk := os.read(out_fd, 65536):
        sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
