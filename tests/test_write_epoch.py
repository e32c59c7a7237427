"""Every write answer names the epoch it was accepted in; a node reports what rejoins set
aside (`discarded_entries`) in status and /metrics."""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
from pathlib import Path

from kevo_repl_tools.launcher import NodeProcess
from test_metrics import scrape

import kevo_repl
from kevo_repl.client.client import AsyncStreamWriter, Client, SemiSync
from kevo_repl.config import Config
from kevo_repl.ha.discarded import discarded_entries
from kevo_repl.ha.promote import new_term
from kevo_repl.plugin.manager import build_registry
from kevo_repl.protocol.codec import Op
from kevo_repl.protocol.written import Written


def _all_write_paths(p: kevo_repl.EmbeddedPrimary, tag: bytes) -> list[Written]:
    """One write through each API: embedded (thread and asyncio), Write, WriteStream."""
    out = [p.write([(Op.PUT, tag + b"-e", b"v")])]

    async def embedded_async() -> Written:
        return await p.awrite([(Op.PUT, tag + b"-a", b"v")])

    out.append(asyncio.run(embedded_async()))
    with Client(p.address) as c:
        out.append(c.write([(Op.PUT, tag + b"-w", b"v")]))
        full = c.write_full([(Op.PUT, tag + b"-f", b"v")])
        out.append(Written(full.first_sequence, full.last_sequence, full.epoch))
        sw = c.stream_writer()
        try:
            out.append(sw.write([(Op.PUT, tag + b"-s", b"v")]))
        finally:
            sw.close()

    async def stream_async() -> Written:
        async with AsyncStreamWriter(p.address) as w:
            return await w.write([(Op.PUT, tag + b"-as", b"v")])

    out.append(asyncio.run(stream_async()))
    return out


def test_every_write_path_answers_with_the_epoch_it_was_accepted_in(tmp_path: Path) -> None:
    data = tmp_path / "p"
    with kevo_repl.open_primary(data, applier="lmdb") as p:
        before = _all_write_paths(p, b"one")
        head = p.head_sequence()
    assert [w.epoch for w in before] == [1] * 6
    assert [w.last for w in before] == list(range(1, 7))
    # elected again in epoch 3 (kevo-repl ha's new_term): writes now answer epoch 3
    cfg = Config()
    cfg.node.data_dir = str(data)
    cfg.applier.name = "lmdb"
    assert new_term(cfg, build_registry(), 3) == head + 1
    with kevo_repl.open_primary(data, applier="lmdb") as p:
        after = _all_write_paths(p, b"two")
        with Client(p.address) as c:  # semi-sync with no replica: the refusal has no epoch
            try:
                c.write_full([(Op.PUT, b"k", b"v")], SemiSync(wait_for=1, timeout_s=0.1))
            except Exception as exc:
                assert "DEADLINE_EXCEEDED" in str(exc)
            else:
                raise AssertionError("a semi-sync write without replicas was acknowledged")
    assert [w.epoch for w in after] == [3] * 6
    assert [w.first for w in after] == list(range(head + 1, head + 7))


def test_a_written_result_is_still_the_pair_it_was() -> None:
    w = Written(5, 9, 2)
    first, last = w
    assert (first, last, w.epoch) == (5, 9, 2) and w == (5, 9) and len(w) == 2
    for again in (pickle.loads(pickle.dumps(w)), copy.copy(w), copy.deepcopy(w)):
        assert again == (5, 9) and again.epoch == 2


def _report(data_dir: Path, name: str, body: bytes) -> None:
    (data_dir / name).mkdir(parents=True)
    (data_dir / name / "discarded.json").write_bytes(body)


def test_status_and_metrics_report_what_rejoins_set_aside(tmp_path: Path) -> None:
    data = tmp_path / "p"
    data.mkdir()
    _report(data, "discarded-epoch-2", json.dumps({"discarded_entries": 7}).encode())
    _report(data, "discarded-epoch-2.1", json.dumps({"discarded_entries": 5}).encode())
    # a damaged report is named in the log and not counted, never guessed from
    _report(data, "discarded-epoch-4", b'{"discarded_entr')
    _report(data, "discarded-epoch-5", json.dumps({"discarded_entries": -3}).encode())
    assert discarded_entries(data) == 12
    node = NodeProcess("primary", data, metrics="127.0.0.1:0")
    try:
        node.start()
        assert node.status()["discarded_entries"] == 12
        assert scrape(node.metrics_address)[("kevo_repl_discarded_entries", ())] == 12
    finally:
        node.kill()
    logged = node.log_file.read_text()
    assert "discarded-epoch-4" in logged and "discarded-epoch-5" in logged


def test_a_node_that_never_rejoined_reports_none(tmp_path: Path) -> None:
    with kevo_repl.open_primary(tmp_path / "p") as p, Client(p.address) as c:
        assert c.status()["discarded_entries"] == 0
