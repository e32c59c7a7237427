"""The Redis anchors of `kevo-repl bench --vs-redis`, measured in the same run.

Catch-up: a Redis primary (no persistence, ``repl-diskless-sync-delay 0`` so that it does not
wait 5 s for more replicas) holding the same keys, and a fresh replica either without
persistence or with ``appendonly yes`` + ``appendfsync always``; the replica is caught up once
its link is up, its sync is over and it holds every key.

Write: ``redis-benchmark`` against a Redis with the same two persistence settings (64 clients,
SET, 100 B values by default). Every Redis runs on loopback in a fresh directory and is always
stopped again. When redis-server (or redis-benchmark) is absent, the caller reports why instead
of a number.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kevo_repl.errors import KevoReplError
from kevo_repl_tools.bench_raw import key_of, value_of

_POLL_S = 0.005
#: persistence settings compared, by the name they are reported under
PERSISTENCE: dict[str, tuple[str, ...]] = {
    "none": ("--appendonly", "no"),
    "aof_always": ("--appendonly", "yes", "--appendfsync", "always"),
}


def missing(tools: Sequence[str] = ("redis-server",)) -> str | None:
    """Why the Redis columns cannot be measured here, or None if they can."""
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        return f"skipped: {' and '.join(absent)} not on PATH (install Redis to compare)"
    return None


class Resp:
    """Just enough of the Redis protocol (RESP2) to load a primary and read INFO."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60.0)
        self.reader = self.sock.makefile("rb")

    @staticmethod
    def encode(*parts: bytes) -> bytes:
        out = [b"*%d\r\n" % len(parts)]
        for p in parts:
            out.append(b"$%d\r\n%s\r\n" % (len(p), p))
        return b"".join(out)

    def read(self) -> Any:
        line = self.reader.readline()
        if not line:
            raise KevoReplError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise KevoReplError(f"redis: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.reader.read(n + 2)[:-2]
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        raise KevoReplError(f"redis: unexpected reply {line!r}")

    def call(self, *parts: bytes) -> Any:
        self.sock.sendall(self.encode(*parts))
        return self.read()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server child process on 127.0.0.1 in its own directory."""

    def __init__(self, root: Path, name: str, extra: Sequence[str], timeout: float) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise KevoReplError("redis-server is not on PATH")
        self.port = _free_port()
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(d),
               "--save", "", "--logfile", str(d / "redis.log"), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = Resp(self.port)
                try:
                    if conn.call(b"PING") == b"PONG":
                        return
                finally:
                    conn.close()
            except (OSError, KevoReplError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise KevoReplError(f"redis-server ({name}) did not start within {timeout}s")
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def _servers() -> Iterator[list[RedisServer]]:
    started: list[RedisServer] = []
    try:
        yield started
    finally:
        for s in reversed(started):
            s.stop()


def _peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def catchup(root: Path, count: int, persistence: str, timeout: float) -> dict[str, Any]:
    """Seconds for a fresh Redis replica with `persistence` to hold `count` keys."""
    with _servers() as servers:
        primary = RedisServer(root, f"primary-{persistence}",
                              ["--appendonly", "no", "--repl-diskless-sync-delay", "0"], 30.0)
        servers.append(primary)
        conn = Resp(primary.port)
        try:
            for first in range(0, count, 1000):
                parts = [b"MSET"]
                for i in range(first, min(first + 1000, count)):
                    parts += [key_of(i), value_of(i)]
                conn.call(*parts)
        finally:
            conn.close()
        started = time.perf_counter()
        replica = RedisServer(
            root, f"replica-{persistence}",
            ["--replicaof", "127.0.0.1", str(primary.port), *PERSISTENCE[persistence]], 30.0,
        )
        servers.append(replica)
        deadline = time.monotonic() + timeout
        conn = Resp(replica.port)
        try:
            while True:
                info = conn.call(b"INFO", b"replication") or b""
                if (
                    b"master_link_status:up" in info
                    and b"master_sync_in_progress:0" in info
                    and conn.call(b"DBSIZE") >= count
                ):
                    break
                if time.monotonic() > deadline:
                    raise KevoReplError("timed out waiting for the Redis replica")
                time.sleep(_POLL_S)
        finally:
            conn.close()
        seconds = time.perf_counter() - started
        return {
            "seconds": round(seconds, 4),
            "entries_per_s": round(count / seconds, 1),
            "replica_rss_mb": _peak_rss_mb(replica.pid),
        }


def parse_benchmark_csv(text: str, test: str = "SET") -> float:
    """Requests per second of `test` in redis-benchmark's ``--csv`` output."""
    for line in text.splitlines():
        fields = [f.strip().strip('"') for f in line.split(",")]
        if len(fields) >= 2 and fields[0] == test:
            return float(fields[1])
    raise KevoReplError(f"redis-benchmark printed no {test} line: {text[-500:]!r}")


def write(
    root: Path, persistence: str, clients: int, value_size: int, requests: int, timeout: float
) -> dict[str, Any]:
    """redis-benchmark's SET rate from `clients` clients against a Redis with `persistence`."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        raise KevoReplError("redis-benchmark is not on PATH")
    with _servers() as servers:
        server = RedisServer(root, f"write-{persistence}", PERSISTENCE[persistence], 30.0)
        servers.append(server)
        cmd = [exe, "-h", "127.0.0.1", "-p", str(server.port), "-c", str(clients), "-t", "set",
               "-d", str(value_size), "-n", str(requests), "-r", "1000000", "--csv"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise KevoReplError(f"redis-benchmark failed: {done.stderr[-500:]}")
        return {
            "clients": clients,
            "requests": requests,
            "writes_per_s": parse_benchmark_csv(done.stdout),
        }
