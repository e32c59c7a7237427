"""Configuration: defaults, TOML overlay, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from kevo_repl.config import Config, load, parse_address
from kevo_repl.errors import ConfigError


def test_defaults_are_valid() -> None:
    cfg = load(None)
    cfg.validate()
    assert cfg.applier.name == "lmdb" and cfg.node.role == "primary"


def test_toml_overlay(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[node]\nrole = "replica"\ndata_dir = "/x"\n'
        '[replica]\nprimary = "127.0.0.1:1234"\nreplica_id = "r9"\n'
        '[applier]\nname = "lmdb"\n[applier.options]\nmap_size = 1048576\n'
        '[stream]\nheartbeat_s = 2\n'
    )
    cfg = load(path)
    cfg.validate()
    assert cfg.node.role == "replica" and cfg.replica.replica_id == "r9"
    assert cfg.applier.options == {"map_size": 1048576}
    assert cfg.stream.heartbeat_s == 2.0


@pytest.mark.parametrize("text,match", [
    ("[nope]\nx = 1\n", "unknown section"),
    ("[node]\nrol = 'primary'\n", "unknown key 'rol'"),
    ("[wal]\nsegment_bytes = 'big'\n", "must be int"),
    ("[node]\nrole = 'leader'\n", "role must be one of"),
    ("[node]\nlisten = 'localhost'\n", "HOST:PORT"),
    ("[wal]\nsegment_bytes = 0\n", "must be positive"),
    ("not toml = = \n", "not valid TOML"),
    ("[node]\nrole = 'replica'\n[replica]\nreplica_id = 'r 1'\n", "replica_id: replica id"),
    ("[node]\nrole = 'replica'\n[replica]\nreplica_id = '" + "a" * 129 + "'\n", "1 to 128"),
    ("[server]\nreplica_id_from_cert = true\n", "needs mutual TLS"),
    ("[server]\ntoken = 'x'\nreplication_token = 'x'\n", "must differ from token"),
])
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load(path).validate()


def test_no_default_replica_id() -> None:
    cfg = Config()
    cfg.node.role = "replica"
    cfg.validate()  # an empty id is valid: the replica derives and stores one
    assert cfg.replica.replica_id == ""


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load("/nonexistent/kevo.toml")


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    with pytest.raises(ConfigError):
        parse_address("127.0.0.1:99999")
    assert Config().data_dir == Path("./data")


def test_replica_flags_set_id_and_replication_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from kevo_repl.cli.main import _node_config, build_parser

    monkeypatch.delenv("KEVO_REPL_REPLICATION_TOKEN", raising=False)
    args = build_parser().parse_args(["replica", "--replication-token", "rt", "--replica-id", "x"])
    cfg = _node_config(args, "replica")
    assert cfg.replica.replication_token == "rt" and cfg.replica.replica_id == "x"
    monkeypatch.setenv("KEVO_REPL_REPLICATION_TOKEN", "from-env")
    cfg = _node_config(build_parser().parse_args(["replica"]), "replica")
    assert cfg.replica.replication_token == "from-env" and cfg.replica.replica_id == ""
