"""`kevo-repl demo`: a primary and a replica on loopback, entries written, digests compared."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from .cli import load_keys
from .launcher import NodeProcess, caught_up, wait_until


def run_demo(args: argparse.Namespace) -> int:
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="kevo-demo-"))
    if args.dir and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {work}")
    primary = NodeProcess("primary", work / "primary")
    replica = NodeProcess("replica", work / "replica", replica_id="r1")
    try:
        print(f"primary listening on {primary.start()}")
        replica.primary = primary.address
        print(f"replica listening on {replica.start()}")
        started = time.perf_counter()
        with primary.client() as c:
            written = 0
            for muts in load_keys(args.count, 0, 16, 100, 1000):
                c.write(muts)
                written += len(muts)
                print(f"\rwritten {written}/{args.count}", end="", flush=True)
        print()
        wait_until(lambda: caught_up(primary, [replica]), args.timeout, "the replica to catch up")
        seconds = time.perf_counter() - started
        pd, rd = primary.digest(), replica.digest()
        print(f"replicated {args.count} entries in {seconds:.2f}s")
        print(f"primary digest: sequence={pd['sequence']} keys={pd['keys']} {pd['digest']}")
        print(f"replica digest: sequence={rd['sequence']} keys={rd['keys']} {rd['digest']}")
        if pd == rd:
            print("OK: digests match")
            return 0
        print("FAIL: digests differ")
        return 1
    finally:
        replica.terminate()
        primary.terminate()
