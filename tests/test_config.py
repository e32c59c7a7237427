"""Configuration: defaults, TOML overlay, and clear errors for bad input, from the schema."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec.inspect as mi
import pytest
from msgspec import Meta

from kevo_repl import schema
from kevo_repl.config import MAX_BATCH_BYTES, Config, from_tables, load, parse_address
from kevo_repl.errors import ConfigError
from kevo_repl.plugin.options import parse_applier_options

SECTIONS = [f.name for f in dataclasses.fields(Config)]


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
    # an integer is a fine float, and is stored as one
    assert cfg.stream.heartbeat_s == 2.0 and isinstance(cfg.stream.heartbeat_s, float)
    # what the file left out keeps its default
    assert cfg.node.listen == Config().node.listen and cfg.wal == Config().wal


@pytest.mark.parametrize("text,match", [
    ("[nope]\nx = 1\n", r"unknown section \[nope\] in .*; valid sections: node, replica, "),
    ("[node]\nrol = 'primary'\n",
     r"unknown key 'rol' in \[node\]; valid keys: role, data_dir, listen, metrics, advertise, "
     r"max_rss_mb, metrics_token, metrics_tls_cert, metrics_tls_key$"),
    ("[wal]\nsegment_bytes = 'big'\n", r"\[wal\] segment_bytes must be int \(positive\), not str"),
    ("[wal]\nsegment_bytes = true\n", r"\[wal\] segment_bytes must be int .*, not bool"),
    ("[node]\nrole = 'leader'\n",
     r"\[node\] role must be one of \"primary\", \"replica\", not \"leader\""),
    ("[node]\nlisten = 'localhost'\n", "HOST:PORT"),
    ("[wal]\nsegment_bytes = 0\n", r"\[wal\] segment_bytes must be positive, not 0"),
    ("[stream]\nheartbeat_s = 0\n", r"\[stream\] heartbeat_s must be positive, not 0"),
    ("[stream]\nmax_batch_bytes = 1073741824\n",
     rf"\[stream\] max_batch_bytes must be from 1 to {MAX_BATCH_BYTES}, not 1073741824"),
    ("[replica]\nbootstrap = 'yes'\n", r"\[replica\] bootstrap must be bool, not str"),
    ("node = 5\n", r"\[node\] must be a table, not int"),
    ("[applier]\noptions = 5\n", r"\[applier\] options must be table, not int"),
    # never wired to a compressor, so it is gone rather than silently ignored
    ("[compressor]\nlevel = 3\n", r"unknown key 'level' in \[compressor\]; valid keys: name$"),
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
    cfg.replica.primary = "127.0.0.1:50052"
    cfg.validate()  # an empty id is valid: the replica derives and stores one
    assert cfg.replica.replica_id == ""


def _wrong_type_value(t: mi.Type) -> Any:
    return "text" if isinstance(t, mi.IntType | mi.FloatType | mi.BoolType) else [1]


@pytest.mark.parametrize("section", SECTIONS)
def test_every_declared_key_refuses_a_wrong_type_naming_section_and_key(section: str) -> None:
    declared = schema.fields(type(getattr(Config(), section)))
    for name, f in declared.items():
        # the default goes through the schema unchanged
        cfg = from_tables({section: {name: f.default}})
        assert getattr(getattr(cfg, section), name) == f.default
        with pytest.raises(ConfigError, match=rf"^\[{section}\] {name} must be "):
            from_tables({section: {name: _wrong_type_value(f.type)}})


@pytest.mark.parametrize("section", SECTIONS)
def test_every_bound_is_enforced_at_its_edge(section: str) -> None:
    for name, f in schema.fields(type(getattr(Config(), section))).items():
        t = f.type
        if not isinstance(t, mi.IntType | mi.FloatType):
            continue
        if t.ge is not None:
            from_tables({section: {name: t.ge}})  # the bound itself is fine
            below = t.ge - 1 if isinstance(t, mi.IntType) else t.ge - 0.001
            with pytest.raises(ConfigError, match=rf"\[{section}\] {name} must be "):
                from_tables({section: {name: below}})
        if t.gt is not None:
            with pytest.raises(ConfigError, match=rf"\[{section}\] {name} must be positive"):
                from_tables({section: {name: t.gt}})
        if t.le is not None:
            from_tables({section: {name: t.le}})
            with pytest.raises(ConfigError, match=rf"\[{section}\] {name} must be from "):
                from_tables({section: {name: t.le + 1}})


def test_an_error_quotes_a_bad_value_only_so_far() -> None:
    with pytest.raises(ConfigError) as info:
        from_tables({"node": {"listen": ["x" * 10_000]}})
    assert str(info.value).startswith("[node] listen must be str, not list")
    assert len(str(info.value)) < 200


def test_validate_checks_values_set_after_load() -> None:
    # flags and code change a loaded config; validate() holds them to the same schema
    cfg = Config()
    cfg.wal.segment_bytes = 0
    with pytest.raises(ConfigError, match=r"\[wal\] segment_bytes must be positive, not 0"):
        cfg.validate()
    cfg = Config()
    cfg.node.role = "leader"  # type: ignore[assignment]  # what an unchecked caller could do
    with pytest.raises(ConfigError, match=r"\[node\] role must be one of"):
        cfg.validate()


@pytest.mark.parametrize(("change", "match"), [
    ({"server": {"tls_cert": "c.pem"}}, r"\[server\] tls_cert and tls_key go together"),
    ({"server": {"tls_client_ca": "ca.pem"}}, r"\[server\] tls_client_ca needs tls_cert"),
    ({"connector": {"tls_cert": "c", "tls_key": "k"}}, r"\[connector\] a client certificate"),
    ({"node": {"role": "replica"}, "replica": {"primary": "nohost"}}, r"\[replica\] primary"),
])
def test_keys_that_depend_on_one_another(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_tables(change).validate()


@dataclass(frozen=True)
class _PluginOptions:
    """How a third-party applier declares its options."""

    mode: Annotated[Literal["fast", "safe"], Meta(description="how hard to try")] = "safe"
    depth: Annotated[int, Meta(ge=1, le=8, description="how deep")] = 2


def test_applier_options_are_checked_by_the_host_against_the_plugins_schema() -> None:
    assert parse_applier_options(_PluginOptions, {}, "mine") == _PluginOptions()
    assert parse_applier_options(_PluginOptions, {"mode": "fast", "depth": 8}, "mine") == (
        _PluginOptions("fast", 8)
    )
    with pytest.raises(ConfigError, match=(
        r"unknown key 'deep' in \[applier.options\] \(mine applier\); valid keys: mode, depth"
    )):
        parse_applier_options(_PluginOptions, {"deep": 3}, "mine")
    with pytest.raises(ConfigError, match=(
        r"\[applier.options\] \(mine applier\) mode must be one of \"fast\", \"safe\", not \"x\""
    )):
        parse_applier_options(_PluginOptions, {"mode": "x"}, "mine")
    with pytest.raises(ConfigError, match=r"depth must be from 1 to 8, not 9"):
        parse_applier_options(_PluginOptions, {"depth": 9}, "mine")
    with pytest.raises(ConfigError, match=r"depth must be int \(from 1 to 8\), not float"):
        parse_applier_options(_PluginOptions, {"depth": 2.0}, "mine")


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
