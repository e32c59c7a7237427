"""py-lmdb's putmulti gives the GIL up and takes it back for every item, so any other thread
running Python code at the same time (the replica's event loop verifying the next response)
slows it down by orders of magnitude: each re-acquisition waits for the other thread's switch
interval. Usage: python bench/lmdb_gil_convoy.py"""

from __future__ import annotations

import sys
import tempfile
import threading
import time

import lmdb

ENTRIES = 50_000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = lmdb.open(tmp, map_size=1 << 32, sync=False, max_dbs=2)
        db = env.open_db(b"d")
        offset = 0

        def putmulti() -> float:
            nonlocal offset
            offset += 1_000_000
            items = [(b"%016d" % (i + offset), b"x" * 100) for i in range(ENTRIES)]
            started = time.perf_counter()
            with env.begin(write=True) as txn:
                txn.cursor(db).putmulti(iter(items), overwrite=True)
            return time.perf_counter() - started

        for interval in (0.005, 0.0005, 0.0001):
            sys.setswitchinterval(interval)
            alone = putmulti()
            stop = threading.Event()

            def spin(stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    pass

            spinner = threading.Thread(target=spin)
            spinner.start()
            try:
                time.sleep(0.01)
                contended = putmulti()
            finally:
                stop.set()
                spinner.join()
            print(
                f"switch interval {interval * 1e3:5.2f} ms: putmulti of {ENTRIES} entries "
                f"alone {alone * 1e3:7.1f} ms, "
                f"next to a busy Python thread {contended * 1e3:7.1f} ms"
            )
        env.close()


if __name__ == "__main__":
    main()
