"""TLS, mutual TLS, tokens, keepalive, heartbeats and network faults between real node
processes on loopback; faults come from a TCP proxy the test controls."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import trustme
from helpers import assert_same_digest, cli, load, wait_caught_up
from kevo_repl_tools.launcher import wait_until
from proxy import FaultProxy

from kevo_repl.config import ConnectorConfig

FAST = {
    "stream": {"heartbeat_s": 0.3, "stall_after_s": 1.0},
    "replica": {"backoff_initial_s": 0.05, "backoff_max_s": 0.4},
}
# keepalive that finds a dead peer within about two seconds
FAST_KEEPALIVE = {
    "connector": {"keepalive_s": 1.0, "keepalive_timeout_s": 1.0},
    "server": {"keepalive_s": 1.0, "keepalive_timeout_s": 1.0},
}


def _write(path: Path, *parts: dict[str, dict[str, object]]) -> Path:
    """Merge section tables and write them as TOML."""
    merged: dict[str, dict[str, object]] = {}
    for part in parts:
        for section, table in part.items():
            merged.setdefault(section, {}).update(table)
    lines = []
    for section, table in merged.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("replica-r1")
    out = {}
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(d / "other-ca.pem"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    for name in ("ca.pem", "other-ca.pem", "server.key", "server.pem", "client.key", "client.pem"):
        out[name] = str(d / name)
    return out


def _tls_server(pki: dict[str, str], mutual: bool) -> dict[str, dict[str, object]]:
    table: dict[str, object] = {"tls_cert": pki["server.pem"], "tls_key": pki["server.key"]}
    if mutual:
        table["tls_client_ca"] = pki["ca.pem"]
    return {"server": table}


def _client_cfg(pki: dict[str, str], mutual: bool) -> ConnectorConfig:
    if mutual:
        return ConnectorConfig(tls_ca=pki["ca.pem"], tls_cert=pki["client.pem"],
                               tls_key=pki["client.key"])
    return ConnectorConfig(tls_ca=pki["ca.pem"])


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_replication(cluster, tmp_path: Path, pki: dict[str, str], mutual: bool) -> None:
    pconf = _write(tmp_path / "p.toml", _tls_server(pki, mutual))
    cc = _client_cfg(pki, mutual)
    conn: dict[str, object] = {"tls_ca": pki["ca.pem"]}
    if mutual:
        conn |= {"tls_cert": pki["client.pem"], "tls_key": pki["client.key"]}
    rconf = _write(tmp_path / "r.toml", {"connector": conn}, _tls_server(pki, mutual))
    primary = cluster.primary(config=pconf, client_config=cc)
    replica = cluster.replica(primary, config=rconf, client_config=cc)
    with primary.client() as c:
        c.write([(1, f"k{i}".encode(), b"v") for i in range(500)])
    wait_caught_up(primary, replica)
    assert_same_digest(primary, replica)
    args = ["--tls-ca", pki["ca.pem"]]
    if mutual:
        args += ["--tls-cert", pki["client.pem"], "--tls-key", pki["client.key"]]
    res = cli("get", "--target", replica.address, *args, "k7")
    assert res.returncode == 0 and res.stdout.strip() == "v"
    # a plaintext client gets nowhere
    res = cli("get", "--target", primary.address, "--timeout", "3", "k7")
    assert res.returncode != 0 and "UNAVAILABLE" in res.stderr


@pytest.mark.parametrize("case", ["wrong-ca", "no-client-cert"])
def test_tls_failures_are_reported(cluster, tmp_path: Path, pki: dict[str, str], case: str) -> None:
    mutual = case == "no-client-cert"
    pconf = _write(tmp_path / "p.toml", _tls_server(pki, mutual))
    primary = cluster.primary(config=pconf, client_config=_client_cfg(pki, mutual))
    ca = pki["other-ca.pem"] if case == "wrong-ca" else pki["ca.pem"]
    rconf = _write(tmp_path / "r.toml", FAST, {"connector": {"tls_ca": ca}})
    replica = cluster.replica(primary, config=rconf)
    wait_until(lambda: replica.status()["reconnects"] >= 2, 30, "failed connection attempts")
    st = replica.status()
    assert st["state"] in ("ERROR", "CONNECTING")
    assert "TLS handshake" in st["last_error"] or "UNAVAILABLE" in st["last_error"]
    assert st["last_applied"] == 0 and not st["connected"]
    log = replica.log_file.read_text()
    assert "ERROR" in log or "WARNING" in log


def test_token_auth(cluster, tmp_path: Path) -> None:
    pconf = _write(tmp_path / "p.toml", {"server": {"token": "s3cret"}})
    good = ConnectorConfig(token="s3cret")
    primary = cluster.primary(config=pconf, client_config=good)
    ok = cluster.replica(primary, name="ok", replica_id="ok", client_config=good,
                         config=_write(tmp_path / "ok.toml", {"connector": {"token": "s3cret"}}))
    bad = cluster.replica(primary, name="bad", replica_id="bad",
                          config=_write(tmp_path / "bad.toml", FAST,
                                        {"connector": {"token": "wrong"}}))
    res = cli("put", "--target", primary.address, "a", "1")
    assert res.returncode != 0 and "UNAUTHENTICATED" in res.stderr
    res = cli("put", "--target", primary.address, "--token", "wrong", "a", "1")
    assert res.returncode != 0 and "wrong token" in res.stderr
    res = cli("put", "--target", primary.address, "--token", "s3cret", "a", "1")
    assert res.returncode == 0, res.stderr
    wait_caught_up(primary, ok)
    wait_until(lambda: "credentials" in bad.status()["last_error"], 30, "auth failure report")
    st = bad.status()
    assert st["last_applied"] == 0 and "token" in st["last_error"]


def test_cut_stall_delay_and_idle_lag(cluster, tmp_path: Path) -> None:
    # default keepalive (10 s + 5 s): a stalled connection stays up long enough to be seen
    primary = cluster.primary(config=_write(tmp_path / "p.toml", FAST))
    proxy = FaultProxy(primary.address)
    proxy.start()
    try:
        replica = cluster.replica(primary, config=_write(tmp_path / "r.toml", FAST))
        replica.primary = proxy.address
        replica.kill()
        replica.start()
        load(primary.address, 2_000)
        wait_caught_up(primary, replica)

        # idle: heartbeats keep lag honest, and it is zero when caught up
        time.sleep(1.0)
        st = replica.status()
        assert st["lag_entries"] == 0 and st["lag_seconds"] == 0.0 and not st["stalled"]
        assert 0 <= st["last_message_age_s"] < 1.0  # heartbeats arrive while idle

        # cut: writes go on; the replica reconnects with backoff and converges
        proxy.cut()
        load(primary.address, 2_000, start=2_000)
        wait_until(lambda: len(replica.status()["backoff_history_s"]) >= 2, 30, "retries")
        proxy.resume()
        wait_caught_up(primary, replica)
        st = replica.status()
        delays = st["backoff_history_s"]
        assert all(0 < d <= 0.4 for d in delays), delays  # capped at backoff_max_s
        assert st["reconnects"] >= 2

        # stall: connection stays up but nothing flows; writes still complete
        proxy.stall()
        summary = load(primary.address, 2_000, start=4_000)
        assert summary["last_sequence"] == 6_000
        wait_until(lambda: replica.status()["stalled"], 30, "replica to report a stall")
        wait_until(
            lambda: any(r["stalled"] for r in primary.status()["replicas"]), 30,
            "primary to flag the replica as stalled",
        )
        proxy.resume()
        wait_caught_up(primary, replica)
        assert not replica.status()["stalled"]

        # delay: every chunk held back a little
        proxy.delay(0.02)
        load(primary.address, 2_000, start=6_000)
        wait_caught_up(primary, replica)
        proxy.resume()
        digest = assert_same_digest(primary, replica)
        assert digest["sequence"] == 8_000
        assert replica.status()["applied_entries"] == 8_000
    finally:
        proxy.close()


def test_lag_while_replica_is_frozen_and_dead_session_freed(cluster, tmp_path: Path) -> None:
    primary = cluster.primary(config=_write(tmp_path / "p.toml", FAST, FAST_KEEPALIVE))
    replica = cluster.replica(primary, config=_write(tmp_path / "r.toml", FAST, FAST_KEEPALIVE))
    load(primary.address, 1_000)
    wait_caught_up(primary, replica)
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        load(primary.address, 1_000, start=1_000)  # writes do not wait for a frozen replica
        # keepalive: the primary notices the frozen peer and frees its session; the slot stays
        wait_until(lambda: not primary.status()["replicas"][0]["connected"], 30,
                   "the primary to drop the frozen replica's session")
        [slot] = primary.status()["replicas"]
        assert slot["replica_id"] == "r1" and slot["acked_sequence"] == 1_000
        assert slot["lag_entries"] == 1_000
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    wait_caught_up(primary, replica)
    # entries the kernel had buffered may be applied before the replica notices the old
    # connection is gone; then it reconnects
    wait_until(lambda: primary.status()["replicas"][0]["connected"], 30, "the replica to return")


def test_second_replica_with_a_live_id_is_refused_until_the_first_is_dead(
    cluster, tmp_path: Path
) -> None:
    primary = cluster.primary()
    first = cluster.replica(primary, name="first", replica_id="same")
    load(primary.address, 100)
    wait_caught_up(primary, first)
    second = cluster.replica(primary, name="second", replica_id="same",
                             config=_write(tmp_path / "second.toml", FAST))
    wait_until(lambda: "already streaming" in second.status()["last_error"], 30,
               "the second stream to be refused")
    st = second.status()
    assert "ALREADY_EXISTS" in st["last_error"] and st["last_applied"] == 0
    # the live replica keeps its slot and goes on
    load(primary.address, 100, start=100)
    wait_caught_up(primary, first)
    [slot] = primary.status()["replicas"]
    assert slot["connected"] and slot["acked_sequence"] == 200
    assert first.status()["state"] != "ERROR" and first.status()["last_error"] == ""
    assert second.status()["last_applied"] == 0
    # once the first is dead, the second (still retrying) takes over the slot
    first.kill()
    wait_until(lambda: second.status()["last_applied"] == 200, 60, "the takeover")
    assert_same_digest(primary, second)


def test_replication_token_is_its_own_role(cluster, tmp_path: Path) -> None:
    pconf = _write(tmp_path / "p.toml",
                   {"server": {"token": "client-s3cret", "replication_token": "repl-s3cret"}})
    client = ConnectorConfig(token="client-s3cret")
    primary = cluster.primary(config=pconf, client_config=client)
    ok = cluster.replica(primary, name="ok", replica_id="ok", config=_write(
        tmp_path / "ok.toml", {"replica": {"replication_token": "repl-s3cret"}}))
    # a replica holding only the client-API token
    denied = cluster.replica(primary, name="denied", replica_id="denied", config=_write(
        tmp_path / "denied.toml", FAST, {"connector": {"token": "client-s3cret"}}))
    res = cli("put", "--target", primary.address, "--token", "client-s3cret", "a", "1")
    assert res.returncode == 0, res.stderr
    wait_caught_up(primary, ok)
    wait_until(lambda: "PERMISSION_DENIED" in denied.status()["last_error"] or
               "denied replication" in denied.status()["last_error"], 30, "the refusal")
    assert denied.status()["last_applied"] == 0
    assert [r["replica_id"] for r in primary.status()["replicas"]] == ["ok"]
    res = cli("put", "--target", primary.address, "--token", "repl-s3cret", "b", "2")
    assert res.returncode != 0 and "PERMISSION_DENIED" in res.stderr


def test_replica_id_bound_to_certificate(cluster, tmp_path: Path, pki: dict[str, str]) -> None:
    server = _tls_server(pki, mutual=True)
    server["server"]["replica_id_from_cert"] = True
    pconf = _write(tmp_path / "p.toml", server)
    primary = cluster.primary(config=pconf, client_config=_client_cfg(pki, mutual=True))
    conn = {"connector": {"tls_ca": pki["ca.pem"], "tls_cert": pki["client.pem"],
                          "tls_key": pki["client.key"]}}
    bound = cluster.replica(primary, name="bound", replica_id="replica-r1",
                            config=_write(tmp_path / "bound.toml", conn))
    other = cluster.replica(primary, name="other", replica_id="r2",
                            config=_write(tmp_path / "other.toml", FAST, conn))
    with primary.client() as c:
        c.write([(1, f"k{i}".encode(), b"v") for i in range(100)])
    wait_caught_up(primary, bound)
    wait_until(lambda: "PERMISSION_DENIED" in other.status()["last_error"], 30, "the refusal")
    assert "not bound to the client certificate" in other.status()["last_error"]
    assert other.status()["last_applied"] == 0
    assert [r["replica_id"] for r in primary.status()["replicas"]] == ["replica-r1"]


def test_replica_without_id_derives_one_and_keeps_it(cluster) -> None:
    primary = cluster.primary()
    a = cluster.replica(primary, name="a", replica_id=None)
    b = cluster.replica(primary, name="b", replica_id=None)
    load(primary.address, 100)
    wait_caught_up(primary, a, b)
    ids = {(r / "replica_id").read_text().strip() for r in (a.data_dir, b.data_dir)}
    assert len(ids) == 2 and "r1" not in ids
    assert {r["replica_id"] for r in primary.status()["replicas"]} == ids
    a_id = (a.data_dir / "replica_id").read_text().strip()
    assert a.status()["replica_id"] == a_id
    a.kill()
    a.start()
    load(primary.address, 100, start=100)
    wait_caught_up(primary, a, b)
    assert a.status()["replica_id"] == a_id
    slots = primary.status()["replicas"]
    assert len(slots) == 2 and all(s["connected"] and s["acked_sequence"] == 200 for s in slots)
