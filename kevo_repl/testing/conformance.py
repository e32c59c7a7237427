"""EngineConformance: the engine contract (kevo_repl.plugin.engine) as pytest tests.

Subclass it in a module pytest collects (the subclass's name starts with ``Test``), set
``engine``, and set a requirement flag to False for what the engine does not offer: the tests
that need it are then skipped, with the flag named in the reason.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

import pytest

from kevo_repl.errors import StoreError
from kevo_repl.plugin.engine import (
    ENGINE_API_VERSION,
    OP_DELETE,
    OP_PUT,
    Engine,
    EngineSpec,
)
from kevo_repl.protocol.codec import Entry, Op
from kevo_repl.storage.applier import open_applier
from kevo_repl.storage.position import Position
from kevo_repl.testing.workload import (
    CRASH_BATCH,
    CRASH_HISTORY,
    batch_of,
    crash_batch,
    expected_after,
    resolve_spec,
)

#: how long the crash test waits for the child's next line before it fails
LINE_TIMEOUT_S = 60.0
_MIB = 1 << 20


def _state(engine: Engine) -> tuple[bytes | None, list[tuple[bytes, bytes]]]:
    """The blob and every item, read in one snapshot."""
    with engine.snapshot() as view:
        return view.meta, list(view.items())


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


class EngineConformance:
    """The conformance tests. Set `engine`; the flags below describe what it offers."""

    #: the engine: its registered name, or "package.module:ATTRIBUTE" naming its EngineSpec
    engine: ClassVar[str] = ""
    #: the [applier.options] it is opened with
    options: ClassVar[Mapping[str, Any]] = {}

    # -- requirement flags ------------------------------------------------------------------
    #: data and blob survive close and reopen, and the death of the process (SIGKILL)
    persistent: ClassVar[bool] = True
    #: values of 64 MiB are stored (needs that much memory, twice)
    large_values: ClassVar[bool] = True
    #: keys up to this many bytes must be accepted (511: what LMDB and LevelDB nodes share)
    key_size_needed: ClassVar[int] = 511
    #: SIGKILL crash rounds, and batches committed before each kill
    crash_rounds: ClassVar[int] = 3
    crash_kill_after: ClassVar[tuple[int, ...]] = (2, 25)

    # -- fixtures -------------------------------------------------------------------------------

    def spec(self) -> EngineSpec:
        if not self.engine:
            pytest.fail(f"{type(self).__name__} does not set `engine`")
        return resolve_spec(self.engine)

    def open_engine(self, path: Path, durable: bool = True) -> Engine:
        return self.spec().open(path, dict(self.options), durable)

    def require(self, flag: str) -> None:
        if not getattr(self, flag):
            pytest.skip(f"{type(self).__name__}.{flag} is False")

    @pytest.fixture
    def store_path(self, tmp_path: Path) -> Path:
        return tmp_path / "store"

    @pytest.fixture
    def store(self, store_path: Path) -> Iterator[Engine]:
        engine = self.open_engine(store_path)
        try:
            yield engine
        finally:
            engine.close()

    # -- the contract's shape -------------------------------------------------------------------

    def test_spec_names_this_contract_version(self, store: Engine) -> None:
        spec = self.spec()
        assert spec.api_version == ENGINE_API_VERSION
        assert isinstance(store, Engine)
        assert isinstance(store.max_key_size, int)
        assert store.max_key_size >= self.key_size_needed

    def test_fresh_engine_is_empty(self, store: Engine) -> None:
        assert store.read_meta() is None
        assert _state(store) == (None, [])
        assert store.get(b"k") is None

    # -- commit -------------------------------------------------------------------------------

    def test_commit_round_trip(self, store: Engine) -> None:
        store.commit([OP_PUT, OP_PUT], [b"b", b"a"], [b"2", b"1"], b"meta-1")
        assert store.read_meta() == b"meta-1"
        assert store.get(b"a") == b"1" and store.get(b"b") == b"2"
        assert _state(store) == (b"meta-1", [(b"a", b"1"), (b"b", b"2")])

    def test_ops_apply_in_batch_order(self, store: Engine) -> None:
        store.commit(
            [OP_PUT, OP_DELETE, OP_PUT, OP_PUT, OP_DELETE, OP_PUT],
            [b"a", b"a", b"b", b"b", b"c", b"c"],
            [b"1", b"", b"1", b"2", b"", b"3"],
            b"m",
        )
        assert _state(store) == (b"m", [(b"b", b"2"), (b"c", b"3")])

    def test_ops_as_bytes(self, store: Engine) -> None:
        # column blocks hand the ops column over as bytes, one op per byte
        store.commit(bytes([OP_PUT, OP_PUT, OP_DELETE]), [b"a", b"b", b"a"],
                     [b"1", b"2", b""], b"m")
        assert _state(store) == (b"m", [(b"b", b"2")])
        store.commit(bytes([OP_PUT, OP_PUT]), [b"c", b"d"], [b"3", b"4"], b"m2")
        assert _state(store) == (b"m2", [(b"b", b"2"), (b"c", b"3"), (b"d", b"4")])

    def test_deletes_of_absent_keys(self, store: Engine) -> None:
        store.commit([OP_DELETE, OP_DELETE], [b"never", b"written"], [b"", b""], b"m1")
        assert _state(store) == (b"m1", [])
        store.commit([OP_PUT, OP_DELETE], [b"x", b"y"], [b"1", b""], b"m2")
        assert _state(store) == (b"m2", [(b"x", b"1")])

    def test_empty_commit_changes_only_the_meta(self, store: Engine) -> None:
        store.commit([OP_PUT], [b"k"], [b"v"], b"one")
        store.commit([], [], [], b"two")
        assert _state(store) == (b"two", [(b"k", b"v")])

    def test_meta_is_opaque_bytes(self, store: Engine) -> None:
        blob = bytes(range(256)) * 16  # every byte value, NUL included
        store.commit([], [], [], blob)
        assert store.read_meta() == blob
        store.commit([], [], [], b"")
        assert store.read_meta() == b""  # empty, yet committed: not None

    def test_bytewise_key_order(self, store: Engine) -> None:
        keys = [b"\xff", b"\x00", b"a", b"a\x00", b"ab", b"\x7f", b"\x80", b"B", b"\x00\x00"]
        store.commit([OP_PUT] * len(keys), keys, [b"v"] * len(keys), b"m")
        assert [k for k, _ in _state(store)[1]] == sorted(keys)

    def test_one_byte_and_longest_keys(self, store: Engine) -> None:
        longest = b"L" * self.key_size_needed
        store.commit([OP_PUT, OP_PUT], [b"\x01", longest], [b"short", b"long"], b"m")
        assert store.get(b"\x01") == b"short"
        assert store.get(longest) == b"long"
        store.commit([OP_DELETE], [longest], [b""], b"m2")
        assert store.get(longest) is None

    def test_empty_and_64_mib_values(self, store: Engine, store_path: Path) -> None:
        store.commit([OP_PUT], [b"empty"], [b""], b"m")
        assert store.get(b"empty") == b""  # an empty value is a value, not an absent key
        self.require("large_values")
        big = os.urandom(_MIB) * 64
        store.commit([OP_PUT, OP_PUT], [b"big", b"after"], [big, b"x"], b"m2")
        assert store.get(b"big") == big
        with store.snapshot() as view:
            assert dict(view.items()) == {b"after": b"x", b"big": big, b"empty": b""}

    # -- reopen and durability ----------------------------------------------------------------

    def test_meta_and_data_survive_reopen(self, store_path: Path) -> None:
        self.require("persistent")
        engine = self.open_engine(store_path)
        engine.commit([OP_PUT, OP_PUT, OP_DELETE], [b"a", b"b", b"a"], [b"1", b"2", b""], b"m")
        expected = _state(engine)
        engine.close()
        again = self.open_engine(store_path)
        try:
            assert again.read_meta() == b"m"
            assert _state(again) == expected == (b"m", [(b"b", b"2")])
        finally:
            again.close()

    def test_non_durable_commits_survive_reopen_after_sync(self, store_path: Path) -> None:
        self.require("persistent")
        engine = self.open_engine(store_path, durable=False)
        for n in range(1, 51):
            engine.commit([OP_PUT] * 20, [b"%d-%d" % (n, i) for i in range(20)],
                          [b"v%d" % n] * 20, b"%d" % n)
        engine.sync()
        expected = _state(engine)
        engine.close()
        again = self.open_engine(store_path, durable=False)
        try:
            assert _state(again) == expected
            assert expected[0] == b"50" and len(expected[1]) == 1000
        finally:
            again.close()

    def test_owns_every_file_it_writes(self, store_path: Path) -> None:
        """The core refuses a directory with files the spec does not own: an engine must own
        what it writes, or it could never reopen its own store."""
        owns = self.spec().owns_file
        engine = self.open_engine(store_path)
        try:
            engine.commit([OP_PUT], [b"k"], [b"v"], b"m")
        finally:
            engine.close()
        if owns is None:
            assert not store_path.exists() or not any(store_path.iterdir())
            return
        assert [p.name for p in store_path.iterdir() if not owns(p.name)] == []
        assert not owns("a-file-no-engine-writes.txt")

    # -- snapshots ----------------------------------------------------------------------------

    def test_snapshot_keeps_its_instant(self, store: Engine) -> None:
        store.commit([OP_PUT, OP_PUT], [b"a", b"b"], [b"1", b"1"], b"m1")
        with store.snapshot() as view:
            store.commit([OP_PUT, OP_DELETE, OP_PUT], [b"a", b"b", b"c"], [b"2", b"", b"2"], b"m2")
            assert view.meta == b"m1"
            assert list(view.items()) == [(b"a", b"1"), (b"b", b"1")]
        assert _state(store) == (b"m2", [(b"a", b"2"), (b"c", b"2")])

    def test_snapshot_resumes_after_a_key(self, store: Engine) -> None:
        keys = [b"a", b"b", b"b\x00", b"c", b"d"]
        store.commit([OP_PUT] * 5, keys, [k.upper() for k in keys], b"m")
        with store.snapshot() as view:
            def after(key: bytes | None) -> list[bytes]:
                return [k for k, _ in view.items(key)]

            assert after(None) == keys
            assert after(b"") == keys
            assert after(b"b") == [b"b\x00", b"c", b"d"]  # a present key: strictly after it
            assert after(b"bb") == [b"c", b"d"]  # an absent key
            assert after(b"d") == [] and after(b"\xff") == []
            # a transfer cut off after two items resumes exactly where it stopped
            first = view.items()
            got = [next(first), next(first)]
            got += list(view.items(got[-1][0]))
            assert got == [(k, k.upper()) for k in keys]

    @pytest.mark.timeout(120)
    def test_snapshot_consistent_under_concurrent_commits(self, store: Engine) -> None:
        """Each commit rewrites every key with its own number: a view mixing two commits,
        or whose blob is not its data's, shows more than one number."""
        keys = [b"key%04d" % i for i in range(200)]
        commits = 300
        done = threading.Event()
        failure: list[BaseException] = []

        def write() -> None:
            try:
                for n in range(1, commits + 1):
                    store.commit([OP_PUT] * len(keys), keys, [b"%d" % n] * len(keys), b"%d" % n)
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        store.commit([OP_PUT] * len(keys), keys, [b"0"] * len(keys), b"0")
        writer = threading.Thread(target=write)
        writer.start()
        views = 0
        deadline = time.monotonic() + 60
        try:
            while (not done.is_set() or views < 5) and time.monotonic() < deadline:
                with store.snapshot() as view:
                    items = list(view.items())
                    assert view.meta is not None
                    assert [k for k, _ in items] == keys
                    assert {v for _, v in items} == {view.meta}
                views += 1
        finally:
            writer.join(timeout=60)
        assert not failure, failure
        assert views >= 5
        assert _state(store)[0] == b"%d" % commits

    # -- bulk load ----------------------------------------------------------------------------

    def test_bulk_load_fills_a_fresh_store(self, store: Engine, store_path: Path) -> None:
        first = [b"k%05d" % i for i in range(0, 3000)]
        second = [b"k%05d" % i for i in range(3000, 5000)]
        store.load(first, [k + b"=" for k in first])
        store.load(second, [k + b"=" for k in second])
        assert store.read_meta() is None  # a load never writes the blob
        assert store.get(b"k04999") == b"k04999="
        store.commit([OP_DELETE], [b"k00000"], [b""], b"installed")
        store.sync()
        meta, items = _state(store)
        assert meta == b"installed"
        assert items == [(k, k + b"=") for k in first[1:] + second]

    # -- crash atomicity ----------------------------------------------------------------------

    def _run_and_kill(self, path: Path, kill_after: int, log: Path, core: bool = False) -> int:
        """Start the crash writer (through the core applier with `core`); SIGKILL it once it
        reported `kill_after` more commits (it is then inside a later one); return the last
        batch it reported before it died."""
        cmd = [sys.executable, "-m", "kevo_repl.testing.crash_writer", self.engine, str(path),
               json.dumps(dict(self.options)), *(["core"] if core else [])]
        with log.open("w") as stderr:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            assert proc.stdout is not None
            lines: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
            last, committed = 0, 0
            while committed < kill_after:
                try:
                    line = lines.get(timeout=LINE_TIMEOUT_S)
                except queue.Empty:
                    pytest.fail(f"the crash writer reported nothing for {LINE_TIMEOUT_S}s")
                if line is None:
                    pytest.fail(f"the crash writer exited early:\n{log.read_text()}")
                if line.startswith("start"):
                    last = int(line.split()[1])
                    continue
                last = int(line)
                committed += 1
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
            # what it reported before it died, still in the pipe
            while (line := lines.get(timeout=LINE_TIMEOUT_S)) is not None:
                last = int(line)
            return last
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()

    @pytest.mark.timeout(600)
    def test_sigkill_mid_commit_leaves_no_partial_batch(self, tmp_path: Path) -> None:
        self.require("persistent")
        for kill_after in self.crash_kill_after:
            path = tmp_path / f"store-{kill_after}"
            previous = 0
            for round_no in range(self.crash_rounds):
                reported = self._run_and_kill(path, kill_after, tmp_path / f"{round_no}.err")
                engine = self.open_engine(path)
                try:
                    meta, items = _state(engine)
                finally:
                    engine.close()
                held = batch_of(meta)
                # every reported commit is there, at most the one in flight besides
                assert reported <= held <= reported + 1
                assert held >= previous + kill_after
                # and the data is exactly batches 1..held: no partial batch, blob matches
                assert dict(items) == expected_after(held)
                assert [k for k, _ in items] == sorted(k for k, _ in items)
                previous = held

    @pytest.mark.timeout(600)
    def test_sigkill_mid_apply_under_the_core_keeps_the_position_exact(
        self, tmp_path: Path
    ) -> None:
        """The same crashes through the core applier: the position blob, committed with each
        batch, names exactly the batches that are there, and counts each entry once."""
        self.require("persistent")
        kill_after = self.crash_kill_after[-1]
        path = tmp_path / "store"
        previous = 0
        for round_no in range(self.crash_rounds):
            reported = self._run_and_kill(path, kill_after, tmp_path / f"{round_no}.err", True)
            store = open_applier(self.engine, self.spec(), path, dict(self.options), True)
            try:
                with store.snapshot() as snap:
                    position, items = snap.position, list(snap.items())
            finally:
                store.close()
            assert position.sequence % CRASH_BATCH == 0  # whole batches only
            held = position.sequence // CRASH_BATCH
            assert reported <= held <= reported + 1
            assert held >= previous + kill_after
            assert position.applied_entries == position.sequence  # each entry once
            assert position.history_id == CRASH_HISTORY
            assert dict(items) == expected_after(held)
            assert [k for k, _ in items] == sorted(k for k, _ in items)
            previous = held

    def test_crash_workload_mixes_every_engine_op(self) -> None:
        # keeps the crash workload honest: each batch holds puts and deletes
        for number in (1, 2, 3):
            assert set(crash_batch(number)[0]) == {OP_PUT, OP_DELETE}

    # -- under the core -----------------------------------------------------------------------

    def test_replicates_under_the_core(self, store_path: Path) -> None:
        """The core's rules on top of this engine: position in the blob, Merge as Put, gaps
        and bad keys refused with nothing applied."""
        applier = open_applier(self.engine, self.spec(), store_path, dict(self.options), True)
        try:
            assert applier.position() == Position()
            pos = applier.apply(
                [Entry(1, Op.PUT, b"a", b"1"), Entry(2, Op.MERGE, b"b", b"2"),
                 Entry(3, Op.DELETE, b"zz", b"")], "history", chain=77,
            )
            assert pos == Position(3, "history", 3, 77) == applier.position()
            with pytest.raises(StoreError, match="expected entry 4"):
                applier.apply([Entry(5, Op.PUT, b"x", b"")], "history")
            with pytest.raises(StoreError, match="key"):
                applier.apply([Entry(4, Op.PUT, b"x", b""), Entry(5, Op.PUT, b"", b"")], "history")
            assert applier.get(b"x") is None
            with applier.snapshot() as snap:
                assert snap.position == pos
                assert list(snap.items()) == [(b"a", b"1"), (b"b", b"2")]
        finally:
            applier.close()
        if self.persistent:
            again = open_applier(self.engine, self.spec(), store_path, dict(self.options), True)
            try:
                assert again.position() == pos
            finally:
                again.close()
