"""The `kevo-repl` command: run nodes and talk to them.

This is the only module that configures logging.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc

from kevo_repl import config as config_mod
from kevo_repl.cli.ha_commands import add_ha_commands
from kevo_repl.client.loadgen import load_keys
from kevo_repl.errors import KevoReplError
from kevo_repl.protocol.codec import Op

log = logging.getLogger(__name__)

#: entry-point group through which other distributions add subcommands
COMMANDS_GROUP = "kevo_repl.commands"


def _setup_logging(level: str, log_file: str | None) -> None:
    handlers: list[logging.Handler] = [
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    ]
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        handlers=handlers,
    )


def _node_config(args: argparse.Namespace, role: str) -> config_mod.Config:
    cfg = config_mod.load(args.config)
    cfg.node.role = role
    if args.data_dir is not None:
        cfg.node.data_dir = args.data_dir
    if args.listen is not None:
        cfg.node.listen = args.listen
    if args.applier is not None:
        cfg.applier.name = args.applier
    if args.metrics is not None:
        cfg.node.metrics = args.metrics
    if role == "replica":
        if args.primary is not None:
            cfg.replica.primary = args.primary
        if args.replica_id is not None:
            cfg.replica.replica_id = args.replica_id
        if args.replication_token is not None:
            cfg.replica.replication_token = args.replication_token
    return cfg


def cmd_node(args: argparse.Namespace) -> int:
    from kevo_repl.node.runtime import tune_gc
    from kevo_repl.node.server import serve

    cfg = _node_config(args, args.command)

    def ready(node: Any) -> None:
        # one machine-readable line on stdout: launchers wait for it instead of polling
        line = {"listening": node.address, "pid": os.getpid()}
        if node.metrics_address:
            line["metrics"] = node.metrics_address
        print(json.dumps(line), flush=True)

    tune_gc()
    asyncio.run(serve(cfg, on_ready=ready))
    return 0


def _client(args: argparse.Namespace) -> Any:
    from kevo_repl.client.client import Client

    # the [connector] table of --config, with flags overriding it
    conn = config_mod.load(args.config).connector
    for flag in ("tls_ca", "tls_cert", "tls_key", "tls_server_name", "token"):
        value = getattr(args, flag)
        if value is not None:
            setattr(conn, flag, value)
    # etcd://HOST:PORT/CLUSTER: the primary of a `kevo-repl ha` cluster
    return Client.discover(args.target, timeout=args.timeout, connector=conn)


def _semisync(args: argparse.Namespace) -> Any:
    from kevo_repl.client.client import SemiSync

    if not args.wait_for:
        return None
    return SemiSync(args.wait_for, args.level == "durable", args.wait_timeout,
                    args.on_timeout == "degrade")


def _write_one(args: argparse.Namespace, op: int, value: bytes) -> int:
    with _client(args) as c:
        resp = c.write_full([(op, args.key.encode(), value)], _semisync(args))
    out: dict[str, Any] = {"sequence": resp.last_sequence}
    if args.wait_for:
        out |= {"acked_by": list(resp.acked_by), "degraded": resp.degraded}
    print(json.dumps(out))
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    return _write_one(args, Op.PUT, args.value.encode())


def cmd_delete(args: argparse.Namespace) -> int:
    return _write_one(args, Op.DELETE, b"")


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as c:
        value = c.get(args.key.encode())
    if value is None:
        print(f"{args.key}: not found", file=sys.stderr)
        return 1
    sys.stdout.write(value.decode(errors="backslashreplace") + "\n")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    if args.count < 0 or args.batch < 1 or args.key_size < 4 or args.value_size < 0:
        raise KevoReplError("--count >= 0, --batch >= 1, --key-size >= 4, --value-size >= 0")
    started = time.perf_counter()
    last = 0
    written = 0
    sync = _semisync(args)
    with _client(args) as c:
        for muts in load_keys(args.count, args.start, args.key_size, args.value_size, args.batch):
            last = c.write_full(muts, sync).last_sequence
            written += len(muts)
            if args.progress:
                print(json.dumps({"written": written, "last_sequence": last}), flush=True)
    seconds = time.perf_counter() - started
    print(json.dumps({"entries": written, "seconds": round(seconds, 6), "last_sequence": last}))
    return 0


def _print_table(rows: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        st = c.status()
    if args.json:
        print(json.dumps(st, sort_keys=True))
        return 0
    replicas = st.pop("replicas", [])
    # the table shows what this role has: counters at zero and the other role's fields are
    # left out (--json has everything)
    always = {"role", "state", "last_applied", "head_sequence", "applied_entries"}
    if st.get("role") == "replica":
        always |= {"lag_entries", "lag_seconds", "stalled", "connected", "received_sequence"}
    _print_table([
        (k, round(v, 3) if isinstance(v, float) else v)
        for k, v in st.items()
        if k in always or v not in ("", None, 0, 0.0, False, [])
    ])
    if replicas:
        print()
        _print_slots(replicas)
    return 0


def _print_slots(replicas: list[dict[str, Any]]) -> None:
    print(f"{'replica':<16} {'state':<8} {'acked':>12} {'lag':>10} {'lag bytes':>12}  "
          f"{'oldest':<6}  peer")
    for r in replicas:
        print(
            f"{r['replica_id']:<16} {r['slot_state']:<8} {r['acked_sequence']:>12} "
            f"{r['lag_entries']:>10} {r['lag_bytes']:>12}  "
            f"{'yes' if r['holds_oldest_segment'] else '':<6}  {r['peer']}"
        )


def cmd_slots_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        st = c.status()
    if st["role"] != "primary":
        raise KevoReplError(f"{args.target} is a replica; slots live on its primary "
                            f"{st['primary']}")
    if args.json:
        print(json.dumps(st["replicas"], sort_keys=True))
    elif st["replicas"]:
        _print_slots(st["replicas"])
    else:
        print("no slots")
    return 0


def cmd_slots_drop(args: argparse.Namespace) -> int:
    with _client(args) as c:
        acked = c.drop_slot(args.replica_id)
    print(json.dumps({"dropped": args.replica_id, "acked_sequence": acked}))
    return 0


def cmd_digest(args: argparse.Namespace) -> int:
    with _client(args) as c:
        d = c.digest()
    if args.json:
        print(json.dumps(d, sort_keys=True))
    else:
        _print_table(list(d.items()))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from kevo_repl.client.client import Client
    from kevo_repl.client.verify import verify

    conn = config_mod.load(args.config).connector
    if args.token is not None:
        conn.token = args.token
    with (
        Client(args.primary, args.timeout, conn) as p,
        Client(args.replica, args.timeout, conn) as r,
    ):
        result = verify(p, r, timeout=args.timeout)
    if args.json:
        print(json.dumps(result.as_dict(), sort_keys=True))
    elif result.equal:
        print(f"equal at sequence {result.sequence}: {result.primary_digest}")
    else:
        print(f"DIFFERENT at sequence {result.sequence}: primary {result.primary_digest}, "
              f"replica {result.replica_digest}")
        for rng in result.ranges:
            d = rng.as_dict()
            print(f"  keys {d['first_key']!r} .. {d['last_key']!r}: "
                  f"{d['primary_keys']} on the primary, {d['replica_keys']} on the replica")
    return 0 if result.equal else 1


def cmd_wal_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kevo_repl.storage.wal_check import check_wal, describe

    report = check_wal(Path(args.data_dir))
    if args.json:
        print(report.to_json())
    else:
        print("\n".join(describe(report)))
    return 1 if report.damaged else 0


def cmd_rebuild_primary(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from kevo_repl.client.rebuild import rebuild_primary
    from kevo_repl.plugin.manager import build_registry

    cfg = config_mod.load(args.config)
    cfg.node.role = "replica"
    cfg.node.data_dir = args.from_replica
    if args.applier is not None:
        cfg.applier.name = args.applier
    result = rebuild_primary(cfg, build_registry(), args.target,
                             batch_bytes=args.batch_bytes, timeout=args.timeout)
    print(json.dumps(asdict(result), sort_keys=True))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from kevo_repl.plugin.manager import build_registry

    regs = build_registry().all()
    if args.json:
        print(json.dumps([
            {"kind": r.kind, "name": r.name, "plugin": r.plugin,
             "distribution": r.distribution, "version": r.version}
            for r in regs
        ]))
        return 0
    print(f"{'kind':<11} {'name':<10} {'distribution':<22} {'version':<9} plugin")
    for r in regs:
        print(f"{r.kind:<11} {r.name:<10} {r.distribution:<22} {r.version:<9} {r.plugin}")
    return 0


def _add_extension_commands(sub: Any) -> None:
    """Commands that other distributions add (kevo-repl-tools: demo, bench, chaos).

    Each entry point of the group `kevo_repl.commands` is a callable taking the subparsers
    object; it adds its parser and must import nothing heavy until its command runs."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken extension must not take the core CLI down
            log.warning("command extension %s (%s) failed to load: %s", ep.name, ep.value, exc)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kevo-repl",
        description="Run kevo-repl primary and replica nodes, write to them, read from them and "
        "inspect them.",
    )
    p.add_argument("--log-level", default=os.environ.get("KEVO_REPL_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    p.add_argument("--log-file", default=None, help="log here instead of stderr")
    sub = p.add_subparsers(dest="command", required=True)

    for role in ("primary", "replica"):
        s = sub.add_parser(role, help=f"run a {role} node until SIGTERM/SIGINT")
        s.add_argument("--config", help="TOML configuration file")
        s.add_argument("--data-dir", help="data directory (default from config: ./data)")
        s.add_argument("--listen", help="HOST:PORT to serve on (port 0 picks a free one; "
                       "the bound address is written to DATA_DIR/node.addr)")
        s.add_argument("--applier", help="store backend by registered name (default lmdb)")
        s.add_argument("--metrics", help="HOST:PORT to serve Prometheus /metrics on")
        if role == "replica":
            s.add_argument("--primary", help="the primary's HOST:PORT")
            s.add_argument("--replica-id", help="this replica's durable name on the primary "
                           "(default: derived once and kept in DATA_DIR/replica_id)")
            s.add_argument("--replication-token",
                           default=os.environ.get("KEVO_REPL_REPLICATION_TOKEN"),
                           help="the primary's replication token "
                           "(default: $KEVO_REPL_REPLICATION_TOKEN)")
        s.set_defaults(func=cmd_node)

    def client_cmd(
        name: str, help: str, parent: Any = None
    ) -> argparse.ArgumentParser:
        s = (parent or sub).add_parser(name, help=help)
        s.add_argument("--target", required=True, help="a node's HOST:PORT")
        s.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
        s.add_argument("--config", help="TOML file whose [connector] table says how to connect")
        s.add_argument("--tls-ca", help="CA file to verify the node's certificate (TLS)")
        s.add_argument("--tls-cert", help="client certificate (mutual TLS)")
        s.add_argument("--tls-key", help="client key (mutual TLS)")
        s.add_argument("--tls-server-name", help="name to expect in the node's certificate")
        s.add_argument("--token", default=os.environ.get("KEVO_REPL_TOKEN"),
                       help="shared token (default: $KEVO_REPL_TOKEN)")
        return s

    def semisync_flags(s: argparse.ArgumentParser) -> None:
        s.add_argument("--wait-for", type=int, default=0, metavar="N",
                       help="return only once N replicas acknowledged (semi-sync; default 0)")
        s.add_argument("--level", choices=["durable", "received"], default="durable",
                       help="what a replica's acknowledgement must mean")
        s.add_argument("--wait-timeout", type=float, default=5.0, metavar="SECONDS")
        s.add_argument("--on-timeout", choices=["raise", "degrade"], default="raise",
                       help="fail the call, or return degraded (logged and counted)")

    s = client_cmd("put", "write one key (primary only)")
    s.add_argument("key")
    s.add_argument("value")
    semisync_flags(s)
    s.set_defaults(func=cmd_put)
    s = client_cmd("delete", "delete one key (primary only)")
    s.add_argument("key")
    semisync_flags(s)
    s.set_defaults(func=cmd_delete)
    s = client_cmd("get", "read one key from any node")
    s.add_argument("key")
    s.set_defaults(func=cmd_get)
    s = client_cmd("load", "write COUNT entries in write batches; print a JSON summary")
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--start", type=int, default=0, help="first key index")
    s.add_argument("--key-size", type=int, default=16)
    s.add_argument("--value-size", type=int, default=100)
    s.add_argument("--batch", type=int, default=1000)
    s.add_argument("--progress", action="store_true", help="print a JSON line per batch")
    semisync_flags(s)
    s.set_defaults(func=cmd_load)
    s = client_cmd("status", "role, state, positions and replicas of a node")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    s = client_cmd("digest", "digest of a node's store at one consistent position")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_digest)

    slots = sub.add_parser("slots", help="the primary's replica slots (WAL retention)")
    slots_sub = slots.add_subparsers(dest="slots_command", required=True)
    s = client_cmd("list", "every slot: acked position, lag, state", slots_sub)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_slots_list)
    s = client_cmd("drop", "forget a slot (its replica must not be streaming); the WAL it "
                   "held is pruned, and the replica bootstraps from a snapshot if it returns",
                   slots_sub)
    s.add_argument("replica_id", help="the slot's replica id")
    s.set_defaults(func=cmd_slots_drop)

    wal = sub.add_parser("wal", help="inspect a stopped or running primary's WAL on disk")
    wal_sub = wal.add_subparsers(dest="wal_command", required=True)
    s = wal_sub.add_parser("check", help="report damage in DATA_DIR/wal without changing "
                           "anything; exit 1 when the primary would refuse to start on it")
    s.add_argument("data_dir", metavar="DATA_DIR", help="the primary's data directory")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_wal_check)

    s = sub.add_parser("rebuild-primary", help="write a stopped replica's store into a new, "
                       "empty primary (the way back from a damaged WAL)")
    s.add_argument("--from-replica", required=True, metavar="DATA_DIR",
                   help="the stopped replica's data directory")
    s.add_argument("--applier", help="the replica's applier (default: from --config)")
    s.add_argument("--config", help="the replica's TOML file: its [applier] opens the store, its "
                   "[connector] reaches the new primary")
    s.add_argument("--target", required=True, help="the new primary's HOST:PORT")
    s.add_argument("--batch-bytes", type=int, default=4 << 20,
                   help="bytes of keys and values per write batch")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    s.set_defaults(func=cmd_rebuild_primary)

    s = sub.add_parser("verify", help="compare a primary and a replica at a common position; "
                       "exit 1 and print the differing key ranges when they differ")
    s.add_argument("--primary", required=True, help="the primary's HOST:PORT")
    s.add_argument("--replica", required=True, help="the replica's HOST:PORT")
    s.add_argument("--timeout", type=float, default=60.0)
    s.add_argument("--config", help="TOML file whose [connector] table says how to connect")
    s.add_argument("--token", default=os.environ.get("KEVO_REPL_TOKEN"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("plugins", help="list every registered plugin")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_plugins)

    add_ha_commands(sub)
    _add_extension_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_file)
    try:
        return int(args.func(args))
    except KevoReplError as exc:
        print(f"kevo-repl: error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        name = code.name if code is not None else "RPC error"
        print(f"kevo-repl: {name}: {details}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
