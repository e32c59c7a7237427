"""The embedded primary (`kevo_repl.open_primary`): threads, asyncio, SIGKILL, a replica."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from helpers import wait_until
from kevo_repl_tools.launcher import NodeProcess

import kevo_repl
from kevo_repl.client.client import Client
from kevo_repl.errors import KevoReplError
from kevo_repl.plugin.manager import hookimpl
from kevo_repl.primary.primary import WriteRejected

WRITERS = 16
PER_WRITER = 200


def key(w: int, i: int) -> bytes:
    return b"w%03d-%06d" % (w, i)


class _Groups:
    """Counts the primary's committed groups (one batch_applied call per group commit)."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    @hookimpl
    def kevo_repl_batch_applied(self, node: str, first_seq: int, last_seq: int,
                                count: int) -> None:
        self.seen.append(count)


def test_concurrent_threads_group_commit(tmp_path: Path) -> None:
    seqs: list[list[int]] = [[] for _ in range(WRITERS)]
    groups = _Groups()
    with kevo_repl.open_primary(tmp_path / "p", applier="lmdb") as p:
        p.primary.pm.register(groups)

        def writer(w: int) -> None:
            for i in range(PER_WRITER):
                seqs[w].append(p.put(key(w, i), b"%d" % i))

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        total = WRITERS * PER_WRITER
        every = sorted(s for ws in seqs for s in ws)
        # each write got its own sequence, none twice, none skipped
        assert every == list(range(1, total + 1))
        for ws in seqs:
            assert ws == sorted(ws)  # one thread's writes are in its order
        assert p.head_sequence() == total
        # reads go to the store directly and see every acknowledged write
        assert all(p.get(key(w, PER_WRITER - 1)) == b"%d" % (PER_WRITER - 1)
                   for w in range(WRITERS))
        assert p.delete(key(0, 0)) == total + 1
        assert p.get(key(0, 0)) is None
        # concurrent writers share group commits (one WAL fsync each): fewer groups than writes
        assert 0 < len(groups.seen) < total


def test_rejected_write_fails_only_itself(tmp_path: Path) -> None:
    with kevo_repl.open_primary(tmp_path / "p") as p:
        with pytest.raises(WriteRejected):
            p.write([])
        assert p.put(b"k", b"v") == 1
        with pytest.raises(WriteRejected):
            p.put(b"", b"v")
        assert p.get(b"k") == b"v"
    with pytest.raises(KevoReplError, match="closed"):
        p.put(b"k2", b"v")


def test_asyncio_api(tmp_path: Path) -> None:
    async def main() -> list[int]:
        async with kevo_repl.open_primary(tmp_path / "p") as p:

            async def writer(w: int) -> list[int]:
                return [await p.aput(key(w, i), b"x" * 100) for i in range(PER_WRITER)]

            got = await asyncio.gather(*(writer(w) for w in range(WRITERS)))
            assert await p.adelete(key(1, 1)) == WRITERS * PER_WRITER + 1
            assert p.get(key(1, 1)) is None
            assert p.get(key(2, 2)) == b"x" * 100
            return sorted(s for ws in got for s in ws)

    assert asyncio.run(main()) == list(range(1, WRITERS * PER_WRITER + 1))


def test_bounded_queue(tmp_path: Path) -> None:
    # a queue of 2 still takes 8 writers: callers wait for a slot instead of growing it
    seen: list[int] = []

    class Watch:
        @hookimpl
        def kevo_repl_batch_applied(self, node: str, first_seq: int, last_seq: int,
                                    count: int) -> None:
            seen.append(p.queued)

    with kevo_repl.open_primary(tmp_path / "p", max_queued=2) as p:
        p.primary.pm.register(Watch())

        def writer(w: int) -> None:
            for i in range(50):
                p.put(key(w, i), b"v")

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert p.head_sequence() == 400
        assert seen and max(seen) <= 2
        assert p.queued == 0


_CHILD = textwrap.dedent("""
    import sys, threading
    import kevo_repl
    p = kevo_repl.open_primary(sys.argv[1])
    out = open(sys.argv[2], "a", buffering=1)
    lock = threading.Lock()
    def writer(w):
        i = 0
        while True:
            seq = p.put(b"w%03d-%06d" % (w, i), b"%d" % i)
            with lock:
                out.write("%d %d %d\\n" % (w, i, seq))  # written only once durable
            i += 1
    for w in range(8):
        threading.Thread(target=writer, args=(w,), daemon=True).start()
    threading.Event().wait()
""")


@pytest.mark.crash
def test_sigkill_loses_no_acknowledged_write(tmp_path: Path) -> None:
    acked = tmp_path / "acked.txt"
    data = tmp_path / "p"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(data), str(acked)])
    try:
        wait_until(lambda: acked.exists() and len(acked.read_text().splitlines()) >= 500,
                   60.0, "the embedded primary to acknowledge 500 writes")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    # one write() per line (line-buffered), so SIGKILL cannot leave half a line
    lines = [ln.split() for ln in acked.read_text().splitlines()]
    assert all(len(fields) == 3 for fields in lines)
    assert len(lines) >= 500
    with kevo_repl.open_primary(data) as p:
        head = p.head_sequence()
        seqs = sorted(int(s) for _, _, s in lines)
        assert len(set(seqs)) == len(seqs)  # no sequence acknowledged twice
        assert head >= seqs[-1]
        for w, i, _ in lines:
            assert p.get(b"w%03d-%06d" % (int(w), int(i))) == i.encode()
        # the restarted primary goes on after its recovered head
        assert p.put(b"after", b"restart") == head + 1


@pytest.mark.crash
def test_replica_follows_embedded_primary(tmp_path: Path) -> None:
    with kevo_repl.open_primary(tmp_path / "p") as p:
        for i in range(300):
            p.put(key(0, i), b"before")
        replica = NodeProcess("replica", tmp_path / "r", primary=p.address, replica_id="r1",
                              applier="lmdb", log_level="WARNING")
        try:
            replica.start(timeout=60)
            threads = [threading.Thread(target=lambda w=w: [p.put(key(w, i), b"live")
                                                            for i in range(100)])
                       for w in range(1, 5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            head = p.head_sequence()
            assert head == 700
            wait_until(lambda: replica.status()["last_applied"] >= head, 60.0,
                       "the replica to catch up")
            with Client(p.address, timeout=60.0) as c:
                want = c.digest()
            assert replica.digest() == want
            with replica.client(10.0) as c:
                assert c.get(key(4, 99)) == b"live"
        finally:
            replica.terminate(timeout=15.0)


def test_serves_clients_in_process(tmp_path: Path) -> None:
    # the same process also serves the node API: a client sees what was written in-process
    with kevo_repl.open_primary(tmp_path / "p") as p:
        p.put(b"k", b"v")
        with Client(p.address, timeout=10.0) as c:
            assert c.get(b"k") == b"v"
            assert c.put(b"k2", b"remote") == 2
            assert c.status()["head_sequence"] == 2
        assert p.get(b"k2") == b"remote"


def test_readme_example_runs(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Embedding the primary", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "replicas connect to 127.0.0.1:" in res.stdout
    assert (tmp_path / "app-data" / "wal").is_dir()
