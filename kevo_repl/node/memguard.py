"""The last line against runaway memory: a thread that ends the node once its RSS passes
`[node] max_rss_mb`.

grpcio 1.83-1.85 can allocate about 1 GB/s inside its transport (docs/DESIGN.md, "GOAWAY
growth"); our channels avoid the known trigger, and this guard bounds whatever else gets
there. Memory that gRPC's core allocated cannot be taken back from Python, so the guard does
not try: it logs one line naming the cause and exits with `EXIT_MEMORY_GUARD`, for a
supervisor to restart the node. Both roles are crash-safe (an acknowledged write is in the
primary's WAL; a replica resumes from the position committed with its data), so the restart
loses nothing. The count of trips survives the restart in a file in the data directory.

A thread, not an asyncio task: it must act even when the event loop is stuck.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: the exit code of a node the guard ended (EX_TEMPFAIL: a supervisor should restart it)
EXIT_MEMORY_GUARD = 75
#: file in the data directory counting the guard's trips across restarts
TRIPS_FILE = "memguard.trips"
#: how often RSS is read; at 1 GB/s the node passes its bound by at most ~50 MB
INTERVAL_S = 0.05

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set size (from /proc/self/statm, cheap to read)."""
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * _PAGE_BYTES


def _exit() -> None:
    os._exit(EXIT_MEMORY_GUARD)  # no shutdown code: the node is crash-safe by design


class MemoryGuard:
    """Watches RSS; over `limit_mb` it logs, counts the trip and calls `on_trip` (exit)."""

    def __init__(
        self,
        limit_mb: int,
        data_dir: str | Path,
        *,
        interval_s: float = INTERVAL_S,
        on_trip: Callable[[], None] = _exit,
    ) -> None:
        self.limit_bytes = limit_mb * 1024 * 1024
        self._trips_path = Path(data_dir) / TRIPS_FILE
        self._interval_s = interval_s
        self._on_trip = on_trip
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.trips = self._read_trips()
        self.peak_bytes = 0

    def _read_trips(self) -> int:
        try:
            return int(self._trips_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            # a count is not worth refusing to start over; the node's data is elsewhere
            log.warning("%s does not hold a number; counting guard trips from 0",
                        self._trips_path)
            return 0

    def start(self) -> None:
        if self.limit_bytes <= 0:
            return  # max_rss_mb = 0: no guard
        self._thread = threading.Thread(target=self._run, name="memory-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def check(self) -> bool:
        """One reading; True if it tripped the guard."""
        rss = rss_bytes()
        self.peak_bytes = max(self.peak_bytes, rss)
        if self.limit_bytes <= 0 or rss <= self.limit_bytes:
            return False
        self.trips += 1
        self._write_trips()
        log.critical(
            "memory guard: RSS %d MB passed [node] max_rss_mb = %d MB; most likely gRPC's "
            "transport growing without end (grpcio GOAWAY growth, docs/DESIGN.md). "
            "Exiting with code %d for a supervisor to restart this node (trip %d; the node "
            "is crash-safe)",
            rss // (1024 * 1024), self.limit_bytes // (1024 * 1024), EXIT_MEMORY_GUARD,
            self.trips,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._on_trip()
        return True

    def _write_trips(self) -> None:
        tmp = self._trips_path.with_suffix(".tmp")
        try:
            tmp.write_text(f"{self.trips}\n")
            os.replace(tmp, self._trips_path)
        except OSError as exc:
            log.warning("cannot record the memory guard's trip in %s: %s",
                        self._trips_path, exc.strerror)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                if self.check():
                    return
            except OSError:  # /proc unreadable: nothing to guard with
                log.exception("memory guard cannot read RSS; it stops")
                return

    def status(self) -> dict[str, Any]:
        return {
            "rss_bytes": rss_bytes(),
            "max_rss_bytes": max(self.limit_bytes, 0),
            "memory_guard_trips": self.trips,
        }
