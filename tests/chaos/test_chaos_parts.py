"""The chaos suite's parts on their own: the fault proxy's corruption, the faulty and broken
appliers, and the checker's verdicts on hand-made evidence."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from kevo_repl_tools import chaos_plugins
from kevo_repl_tools.chaos import ChaosOptions, ChaosRun
from kevo_repl_tools.chaos_checker import Checker, ReturnedWrite, key_of, parse_key, value_of
from kevo_repl_tools.faultproxy import FaultProxy

from kevo_repl.errors import StoreError
from kevo_repl.plugin.manager import Registry, get_plugin_manager
from kevo_repl.protocol.codec import Entry, Op
from kevo_repl.storage.applier import open_registered

pytestmark = pytest.mark.chaos


def _registry() -> Registry:
    pm = get_plugin_manager()
    if not pm.has_plugin("kevo_repl_tools.chaos_plugins"):
        pm.register(chaos_plugins, name="kevo_repl_tools.chaos_plugins")
    return Registry(pm)


def _entries(first: int, n: int) -> list[Entry]:
    return [Entry(s, Op.PUT, key_of(0, s), value_of(key_of(0, s))) for s in range(first,
                                                                             first + n)]


class _Source:
    """A loopback server that sends `payload` to each client, then closes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.sendall(self.payload)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


def _fetch(address: str, size: int) -> bytes:
    host, _, port = address.rpartition(":")
    out = b""
    with socket.create_connection((host, int(port)), timeout=10) as s:
        deadline = time.monotonic() + 10
        while len(out) < size and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


@pytest.mark.parametrize("chunks", [0, 1])
def test_proxy_flips_bytes_downstream_only_when_asked(chunks: int) -> None:
    payload = bytes(range(256)) * 64  # 16 KiB
    source = _Source(payload)
    proxy = FaultProxy(source.address, seed=3)
    try:
        proxy.start()
        proxy.corrupt(chunks)
        time.sleep(0.05)  # corrupt() is applied on the proxy's loop
        got = _fetch(proxy.address, len(payload))
    finally:
        proxy.close()
        source.close()
    assert len(got) == len(payload)
    differing = sum(a != b for a, b in zip(got, payload, strict=True))
    assert differing == chunks == proxy.corrupted
    assert not proxy.alive


def test_proxy_corrupts_only_at_the_marker_when_given_one() -> None:
    payload = b"\x00" * 5000 + b"|" + b"\x00" * 5000
    source = _Source(payload)
    proxy = FaultProxy(source.address, seed=9)
    try:
        proxy.start()
        proxy.corrupt(3, marker=b"|")
        time.sleep(0.05)
        got = _fetch(proxy.address, len(payload))
    finally:
        proxy.close()
        source.close()
    diffs = [i for i, (a, b) in enumerate(zip(got, payload, strict=True)) if a != b]
    assert diffs == [5000] and proxy.corrupted == 1


def test_proxy_refuses_other_hosts() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        FaultProxy("10.0.0.1:80")
    FaultProxy("127.0.0.1:1").close()  # never started: closes cleanly


@pytest.mark.parametrize("real", ["lmdb", "leveldb"])
def test_faulty_applier_fails_applies_on_demand_and_leaves_the_position(
    tmp_path: Path, real: str
) -> None:
    store = open_registered(_registry(), f"faulty-{real}", tmp_path / "node" / "store", {}, True)
    try:
        assert store.apply(_entries(1, 10), "h").sequence == 10
        (tmp_path / "node" / chaos_plugins.DISK_ERROR_FILE).write_text("2\n")
        for _ in range(2):
            with pytest.raises(StoreError, match="ENOSPC"):
                store.apply(_entries(11, 5), "h")
            assert store.position().sequence == 10
        assert not (tmp_path / "node" / chaos_plugins.DISK_ERROR_FILE).exists()
        assert store.apply(_entries(11, 5), "h").applied_entries == 15
        assert store.get(key_of(0, 12)) == value_of(key_of(0, 12))
    finally:
        store.close()
    # the store on disk is the real applier's own
    plain = open_registered(_registry(), real, tmp_path / "node" / "store", {}, True)
    try:
        assert plain.position().sequence == 15
    finally:
        plain.close()


def test_broken_applier_keeps_position_and_data_apart(tmp_path: Path) -> None:
    store = open_registered(_registry(), "broken-lmdb", tmp_path / "store", {}, True)
    try:
        store.apply(_entries(1, 5), "h")
        assert store.position().sequence == 5
        with store.snapshot() as snap:
            assert snap.position.sequence == 5
            assert [k for k, _ in snap.items()] == [key_of(0, s) for s in range(1, 6)]
        with pytest.raises(StoreError, match="expected entry 6"):
            store.apply(_entries(7, 1), "h")
    finally:
        store.close()
    # two stores: the position commits on its own, before the data
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["data", "position"]


def test_checker_verdicts(tmp_path: Path) -> None:
    checker = Checker(time.monotonic(), rss_limit_mb=100)
    assert parse_key(key_of(3, 17)) == (3, 17) and parse_key(b"other") is None
    checker.observe_position("r1", "last_applied", 10)
    checker.observe_position("r1", "last_applied", 12)
    assert not checker.violations
    checker.observe_position("r1", "last_applied", 11)
    assert [v.check for v in checker.violations] == ["monotonic"]

    log = tmp_path / "apply.log"
    log.write_text("r1 1 10 10\nr1 13 20 8\nr2 1 5 5\nr2 4 9 6\nr1 21 2")
    batches = checker.check_apply_log(log)
    assert batches == {"r1": 2, "r2": 2}
    assert checker.violations[-1].check == "at-most-once"
    assert "r2 applied 4..9" in checker.violations[-1].message

    checker.check_sequences_unique([ReturnedWrite(0, 0, 5, 1, 5, 0.1),
                                    ReturnedWrite(1, 0, 5, 5, 9, 0.2)])
    assert "sequences reused" in checker.violations[-1].message
    checker.observe_rss("primary", 150)
    assert checker.violations[-1].check == "memory"


def test_checker_finds_a_missing_returned_write(tmp_path: Path) -> None:
    store = open_registered(_registry(), "lmdb", tmp_path / "store", {}, True)
    try:
        # writer 0 wrote keys 0..9 as sequences 1..10; key 4 never made it
        entries = [Entry(i + 1, Op.PUT, key_of(0, i), value_of(key_of(0, i)))
                   for i in range(10) if i != 4]
        entries = [Entry(n + 1, e.op, e.key, e.value) for n, e in enumerate(entries)]
        store.apply(entries, "h")
        writes = [ReturnedWrite(0, 0, 10, 1, 10, 1.0)]
        checker = Checker(time.monotonic(), rss_limit_mb=100)
        stats = checker.check_store("primary", store, writes, [10], all_returned=True)
        assert stats["missing"] == 1
        assert "lacks 1 entries" in checker.violations[0].message
        # a replica at position 9 is not held to a write that ends at 10
        checker = Checker(time.monotonic(), rss_limit_mb=100)
        stats = checker.check_store("r1", store, writes, [10], all_returned=False)
        assert stats["checked_entries"] == 0 and not checker.violations
    finally:
        store.close()


def test_semisync_acknowledgements_are_held_to_the_replicas_position(tmp_path: Path) -> None:
    run = ChaosRun(ChaosOptions(seed=1, duration=5, dir=tmp_path))
    write = ReturnedWrite(1, 0, 10, 91, 100, 1.0)
    run._semisync_returned(write, ["r1"], degraded=False)
    run._semisync_returned(ReturnedWrite(1, 10, 10, 101, 110, 1.1), [], degraded=True)
    assert run.semisync == {"acked": 1, "degraded": 1}
    asked = time.monotonic()
    run._check_claims("r2", asked, 0)  # r2 promised nothing
    run._check_claims("r1", asked, 99)  # r1 promised 100 as durable
    [v] = run.checker.violations
    assert v.check == "durability" and "up to 100" in v.message and "r1" in v.message
    run._semisync_returned(ReturnedWrite(1, 20, 10, 111, 120, 1.2), ["r2"], degraded=False)
    run._check_claims("r2", time.monotonic(), 120)
    run._semisync_returned(ReturnedWrite(1, 30, 5, 121, 125, 1.3), [], degraded=False)
    assert len(run.checker.violations) == 2  # returned, not degraded, yet acked by nobody


def test_leak_check_tells_a_recycled_pid_from_a_live_process() -> None:
    import os
    import subprocess
    import sys

    from kevo_repl_tools.chaos_checker import process_start_ticks

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = process_start_ticks(child.pid)
        assert started is not None and started == process_start_ticks(child.pid)
        # this test process started long before the child: another start time, same check
        assert process_start_ticks(os.getpid()) not in (None, started)
    finally:
        child.kill()
        child.wait(10)
    assert process_start_ticks(child.pid) is None  # reaped: gone
