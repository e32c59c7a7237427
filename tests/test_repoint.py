"""A running replica follows a new primary without a restart: `kevo-repl repoint` (an admin
RPC) or SIGHUP re-reading `[replica] primary`. Real processes, the old primary SIGKILLed."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from conftest import Cluster
from helpers import assert_same_digest, cli, load, wait_caught_up
from kevo_repl_tools.launcher import NodeProcess, wait_until

from kevo_repl.client.client import Client, SemiSync
from kevo_repl.config import ConnectorConfig
from kevo_repl.protocol.codec import Op

pytestmark = pytest.mark.crash


def _promoted(cluster: Cluster, old: NodeProcess) -> NodeProcess:
    """Promote the killed replica `old` offline and start it as the primary of epoch 2."""
    res = cli("promote", "--data-dir", str(old.data_dir))
    assert res.returncode == 0, res.stderr
    node = NodeProcess("primary", old.data_dir, listen=old.address, applier=old.applier,
                       env=cluster.env())
    cluster.nodes.append(node)
    node.start()
    return node


def _failover(cluster: Cluster, r2_config: Path | None = None,
              r2_client: ConnectorConfig | None = None) -> tuple[NodeProcess, NodeProcess, str]:
    """P with replicas r1 and r2 and semi-sync writes; P SIGKILLed; r1 promoted. Returns the
    new primary, the still running r2 (following the dead P) and P's address."""
    p = cluster.primary()
    r1 = cluster.replica(p, "r1", replica_id="r1")
    r2 = cluster.replica(p, "r2", replica_id="r2", config=r2_config, client_config=r2_client)
    load(p.address, 1_000, batch=50)
    with p.client() as c:
        for i in range(10):
            resp = c.write_full([(Op.PUT, b"acked-%d" % i, b"v")], SemiSync(wait_for=2))
            assert len(resp.acked_by) == 2
    wait_caught_up(p, r1, r2)
    p.kill()
    r1.kill()
    return _promoted(cluster, r1), r2, p.address


def _follows(replica: NodeProcess, primary: NodeProcess) -> bool:
    st = replica.status()
    return bool(st["primary"] == primary.address and st["connected"])


def test_repoint_a_running_replica_to_the_promoted_primary(cluster: Cluster) -> None:
    new, r2, old = _failover(cluster)
    pid = r2.proc.pid if r2.proc else 0
    res = cli("repoint", "--target", r2.address, "--primary", new.address)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"primary": new.address, "previous": old}
    wait_until(lambda: _follows(r2, new), 30, "r2 to stream from the new primary")
    load(new.address, 500, start=5_000, batch=50)
    wait_caught_up(new, r2)
    assert_same_digest(new, r2)
    assert r2.proc is not None and r2.proc.pid == pid  # no restart
    assert r2.status()["last_applied"] == new.status()["head_sequence"]
    # SIGKILL mid-stream: restarted on the new primary, it resumes from its durable position
    with new.client() as c:
        for i in range(200):
            c.put(b"during-%d" % i, b"v")
            if i == 100:
                r2.kill()
    r2.primary = new.address
    r2.start()
    wait_caught_up(new, r2)
    assert_same_digest(new, r2)
    assert r2.status()["applied_entries"] == r2.status()["last_applied"]  # nothing twice


def test_sighup_follows_the_primary_the_config_names_now(
    cluster: Cluster, tmp_path: Path
) -> None:
    conf = tmp_path / "r2.toml"
    conf.write_text('[replica]\nprimary = "127.0.0.1:9"\n')  # the command line wins at start
    new, r2, _ = _failover(cluster, r2_config=conf)
    assert r2.proc is not None
    conf.write_text("[replica]\nprimary = [\n")  # a broken file changes nothing
    r2.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: the configuration does not load" in r2.log_file.read_text(),
               10, "the refusal in the log")
    assert r2.status()["primary"] != new.address and r2.running
    conf.write_text(f'[replica]\nprimary = "{new.address}"\n')
    r2.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: _follows(r2, new), 30, "r2 to follow the primary of its config")
    load(new.address, 300, start=7_000, batch=50)
    wait_caught_up(new, r2)
    assert_same_digest(new, r2)


def test_repoint_is_an_admin_call_and_refuses_what_it_cannot_do(
    cluster: Cluster, tmp_path: Path
) -> None:
    conf = tmp_path / "r.toml"
    conf.write_text('[server]\ntoken = "client-s3cret"\nreplication_token = "admin-s3cret"\n')
    p = cluster.primary()
    r = cluster.replica(p, "r", replica_id="r", config=conf,
                        client_config=ConnectorConfig(token="client-s3cret"))
    for token, want in (("client-s3cret", "PERMISSION_DENIED"), ("", "UNAUTHENTICATED"),
                        ("guess", "UNAUTHENTICATED")):
        with Client(r.address, timeout=5, connector=ConnectorConfig(token=token)) as c, \
                pytest.raises(Exception) as info:
            c.repoint("127.0.0.1:9")
        assert want in str(info.value)
    assert r.status()["primary"] == p.address  # nothing changed
    with Client(r.address, timeout=5, connector=ConnectorConfig(token="admin-s3cret")) as c:
        with pytest.raises(Exception) as bad:
            c.repoint("not an address")
        assert "INVALID_ARGUMENT" in str(bad.value)
        assert c.repoint(p.address) == p.address  # the same primary: nothing to end
    with p.client() as c, pytest.raises(Exception) as on_primary:
        c.repoint(r.address)
    assert "FAILED_PRECONDITION" in str(on_primary.value)
