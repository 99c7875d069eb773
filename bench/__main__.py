"""``python3 -m bench [NAME...]``: run benchmarks, print a summary, save JSON
to bench/results/<UTC date-time>.json.  Record the numbers in BENCHMARKS.md."""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import sys
from pathlib import Path

BENCHES = ("startup", "exits", "linux_boot", "blk", "blk_host", "blk_nested", "net_nested", "p9_nested", "vsock_nested",
           "snapshot_nested", "device_cost", "device_cost_nested")


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[[], *BENCHES], default=[], metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHES)}")
    args = parser.parse_args()
    results: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "host": platform.node(), "python": platform.python_version()}
    for name in args.names or BENCHES:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError:
            print(f"{name}: not available yet", file=sys.stderr)
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            results[name] = module.run()
        except Exception as exc:  # one failed benchmark must not hide the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(results[name], indent=2), flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / (results["date"].replace(":", "") + ".json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
