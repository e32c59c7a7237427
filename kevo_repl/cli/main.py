"""The `kevo-repl` command: run nodes and talk to them.

This is the only module that configures logging.
"""
# (a module docstring, not the parser's description: --help shows no developer notes)

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
from kevo_repl.cli.data_args import (
    add_encoding_flags,
    decode_arg,
    read_value,
    show_bytes,
    write_value,
)
from kevo_repl.cli.ha_commands import add_ha_commands
from kevo_repl.cli.status_view import for_role, print_slots, print_table, status_rows
from kevo_repl.cli.targets import explain_rpc_error, resolve_target
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


def _node_config(args: argparse.Namespace, role: config_mod.Role) -> config_mod.Config:
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
    if cfg.node.role == "primary":
        # the CLI primary is the embedded primary of this process, serving until a signal
        from kevo_repl.node.embedded import serve_primary_until_signal

        serve_primary_until_signal(cfg, on_ready=ready)
    else:
        def primary_from_config() -> str:  # SIGHUP: the file's [replica] primary, again
            return config_mod.load(args.config).replica.primary

        asyncio.run(serve(cfg, on_ready=ready,
                          primary_from_config=primary_from_config if args.config else None))
    return 0


def _client(args: argparse.Namespace) -> Any:
    from kevo_repl.client.client import Client

    if args.target.startswith("etcd://"):
        # etcd://HOST:PORT/CLUSTER: the primary of a `kevo-repl ha` cluster
        return Client.discover(args.target, timeout=args.timeout, connector=_connector(args))
    return Client(resolve_target(args.target), timeout=args.timeout, connector=_connector(args))


def _connector(args: argparse.Namespace) -> config_mod.ConnectorConfig:
    # the [connector] table of --config, with flags overriding it
    conn = config_mod.load(args.config).connector
    for flag in ("tls_ca", "tls_cert", "tls_key", "tls_server_name", "token"):
        value = getattr(args, flag)
        if value is not None:
            setattr(conn, flag, value)
    return conn


def _semisync(args: argparse.Namespace) -> Any:
    from kevo_repl.client.client import SemiSync

    if not args.wait_for:
        return None
    return SemiSync(args.wait_for, args.level == "durable", args.wait_timeout,
                    args.on_timeout == "degrade")


def _idempotency_key(args: argparse.Namespace) -> bytes | None:
    text = getattr(args, "request_id", None)
    return None if text is None else text.encode()


def _write_one(args: argparse.Namespace, op: int, value: bytes) -> int:
    key = decode_arg(args.key, args, "KEY")
    with _client(args) as c:
        resp = c.write_full([(op, key, value)], _semisync(args),
                            idempotency_key=_idempotency_key(args))
    out: dict[str, Any] = {"sequence": resp.last_sequence}
    if resp.duplicate:
        out["duplicate"] = True
    if args.wait_for:
        out |= {"acked_by": list(resp.acked_by), "degraded": resp.degraded}
    print(json.dumps(out))
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    return _write_one(args, Op.PUT, read_value(args))


def cmd_delete(args: argparse.Namespace) -> int:
    return _write_one(args, Op.DELETE, b"")


def cmd_get(args: argparse.Namespace) -> int:
    key = decode_arg(args.key, args, "KEY")
    with _client(args) as c:
        value = c.get(key, min_sequence=args.min_sequence)
    if value is None:
        print(f"{show_bytes(key)}: not found", file=sys.stderr)
        return 1
    write_value(value, args)
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    if args.sequence < 1:
        raise KevoReplError("--sequence must be >= 1 (a write's \"sequence\")")
    started = time.perf_counter()
    with _client(args) as c:
        applied = c.wait_applied(args.sequence, args.timeout)
    print(json.dumps({"sequence": args.sequence, "applied": applied,
                      "waited_s": round(time.perf_counter() - started, 3)}))
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    if args.count < 0 or args.batch < 1 or args.key_size < 4 or args.value_size < 0:
        raise KevoReplError("--count >= 0, --batch >= 1, --key-size >= 4, --value-size >= 0")
    started = time.perf_counter()
    last = 0
    written = 0
    sync = _semisync(args)
    with _client(args) as c:
        try:
            for muts in load_keys(args.count, args.start, args.key_size, args.value_size,
                                  args.batch):
                last = c.write_full(muts, sync).last_sequence
                written += len(muts)
                if args.progress:
                    print(json.dumps({"written": written, "last_sequence": last}), flush=True)
        except grpc.RpcError as exc:
            # what is durable is worth knowing: the summary, then the error (rc 3)
            print(json.dumps({"entries": written, "requested": args.count,
                              "last_sequence": last, "interrupted": _rpc_text(exc)}))
            print(f"kevo-repl: load stopped after {written} of {args.count} entries "
                  f"(last sequence {last}): {_rpc_text(exc)}", file=sys.stderr)
            return 3
    seconds = time.perf_counter() - started
    print(json.dumps({"entries": written, "seconds": round(seconds, 6), "last_sequence": last}))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        st = c.status()
    if args.json:
        print(json.dumps(for_role(st), sort_keys=True))
        return 0
    print_table(status_rows(st))
    if st.get("replicas"):
        print()
        print_slots(for_role(st)["replicas"])
    return 0


def cmd_slots_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        st = c.status()
    if st["role"] != "primary":
        raise KevoReplError(f"{args.target} is a replica; slots live on its primary "
                            f"{st['primary']}")
    slots = for_role(st)["replicas"]
    if args.json:
        print(json.dumps(slots, sort_keys=True))
    elif slots:
        print_slots(slots)
    else:
        print("no slots")
    return 0


def cmd_slots_drop(args: argparse.Namespace) -> int:
    with _client(args) as c:
        acked = c.drop_slot(args.replica_id)
    print(json.dumps({"dropped": args.replica_id, "acked_sequence": acked}))
    return 0


def cmd_repoint(args: argparse.Namespace) -> int:
    with _client(args) as c:
        previous = c.repoint(args.primary)
    print(json.dumps({"primary": args.primary, "previous": previous}))
    return 0


def cmd_digest(args: argparse.Namespace) -> int:
    with _client(args) as c:
        d = c.digest()
    if args.json:
        print(json.dumps(d, sort_keys=True))
    else:
        print_table(list(d.items()))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from kevo_repl.client.client import Client
    from kevo_repl.client.verify import check_roles, verify

    conn = _connector(args)
    primary = resolve_target(args.primary, "--primary")
    replica = resolve_target(args.replica, "--replica")
    with (
        Client(primary, args.timeout, conn) as p,
        Client(replica, args.timeout, conn) as r,
    ):
        replica_id = check_roles(p, r)
        result = verify(p, r, replica_id=replica_id, timeout=args.timeout)
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


class _HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, when it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text and action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
            and action.nargs != 0
        ):
            text += " (default: %(default)s)"
        return text


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kevo-repl")
    except PackageNotFoundError:
        return "unknown"


_ROLE_HELP = {
    "primary": "Run a primary: it accepts writes, logs them durably in its WAL, applies them "
    "to its store and streams them to replicas. Runs until SIGTERM/SIGINT.",
    "replica": "Run a replica: it streams its primary's WAL, applies each batch durably to "
    "its own store, acknowledges it, and serves reads. Runs until SIGTERM/SIGINT.",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kevo-repl",
        description="Run kevo-repl primary and replica nodes, write to them, read from them and "
        "inspect them.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--log-level", default=os.environ.get("KEVO_REPL_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                   help="log messages at this level and above ($KEVO_REPL_LOG_LEVEL)")
    p.add_argument("--log-file", default=None, help="log here instead of stderr")
    sub = p.add_subparsers(dest="command", required=True)
    _add_parser = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        kw.setdefault("formatter_class", _HelpFormatter)
        if "help" in kw:
            kw.setdefault("description", kw["help"][:1].upper() + kw["help"][1:] + ".")
        parser: argparse.ArgumentParser = _add_parser(name, **kw)
        return parser

    sub.add_parser = add_parser  # type: ignore[method-assign]  # every command formats alike

    for role in ("primary", "replica"):
        s = sub.add_parser(role, help=f"run a {role} node until SIGTERM/SIGINT",
                           description=_ROLE_HELP[role])
        s.add_argument("--config", help="TOML configuration file")
        s.add_argument("--data-dir", help="data directory (default from config: ./data)")
        s.add_argument("--listen", help="HOST:PORT to serve on (port 0 picks a free one; "
                       "the bound address is written to DATA_DIR/node.addr)")
        s.add_argument("--applier", help="store backend by registered name (default lmdb)")
        s.add_argument("--metrics",
                       help="HOST:PORT (or PORT, for 127.0.0.1) to serve Prometheus /metrics on")
        if role == "replica":
            s.add_argument("--primary", help="the primary's HOST:PORT (required, here or as "
                           "[replica] primary in --config)")
            s.add_argument("--replica-id", help="this replica's durable name on the primary "
                           "(default: [replica] replica_id, else derived once and kept in "
                           "DATA_DIR/replica_id)")
            s.add_argument("--replication-token",
                           default=os.environ.get("KEVO_REPL_REPLICATION_TOKEN"),
                           help="the primary's replication token "
                           "(default: $KEVO_REPL_REPLICATION_TOKEN)")
        s.set_defaults(func=cmd_node)

    def tls_flags(s: argparse.ArgumentParser) -> None:
        s.add_argument("--tls-ca", help="CA file to verify the node's certificate (TLS)")
        s.add_argument("--tls-cert", help="client certificate (mutual TLS)")
        s.add_argument("--tls-key", help="client key (mutual TLS)")
        s.add_argument("--tls-server-name", help="name to expect in the node's certificate")
        s.add_argument("--token", default=os.environ.get("KEVO_REPL_TOKEN"),
                       help="shared token ($KEVO_REPL_TOKEN)")

    def client_cmd(
        name: str, help: str, parent: Any = None
    ) -> argparse.ArgumentParser:
        s = (parent or sub).add_parser(name, help=help, formatter_class=_HelpFormatter,
                                       description=help[:1].upper() + help[1:] + ".")
        s.add_argument("--target", required=True,
                       help="a node's HOST:PORT, or its data directory (read from node.addr)")
        s.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
        s.add_argument("--config", help="TOML file whose [connector] table says how to connect")
        tls_flags(s)
        return s

    def semisync_flags(s: argparse.ArgumentParser) -> None:
        s.add_argument("--wait-for", type=int, default=0, metavar="N",
                       help="return only once N replicas acknowledged (semi-sync; default 0)")
        s.add_argument("--level", choices=["durable", "received"], default="durable",
                       help="what a replica's acknowledgement must mean")
        s.add_argument("--wait-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="how long the primary waits for --wait-for acknowledgements")
        s.add_argument("--on-timeout", choices=["raise", "degrade"], default="raise",
                       help="fail the call, or return degraded (logged and counted)")

    json_help = "print JSON (every field) instead of a table"
    s = client_cmd("put", "write one key (primary only); print its sequence as JSON")
    s.add_argument("key", metavar="KEY")
    s.add_argument("value", metavar="VALUE", nargs="?",
                   help="the value (or use --value-file)")
    s.add_argument("--value-file", metavar="FILE",
                   help="read the value's exact bytes from FILE; `-` reads stdin")
    add_encoding_flags(s, "KEY and VALUE are given")
    semisync_flags(s)
    s.add_argument("--request-id", "--idempotency-key", dest="request_id", metavar="ID",
                   help="make the write idempotent: a retry with the same ID (1 to 64 bytes of "
                   "UTF-8) and the same key and value prints the original sequence and "
                   '"duplicate": true instead of writing again')
    s.set_defaults(func=cmd_put)
    s = client_cmd("delete", "delete one key (primary only)")
    s.add_argument("key", metavar="KEY")
    add_encoding_flags(s, "KEY is given")
    semisync_flags(s)
    s.set_defaults(func=cmd_delete)
    s = client_cmd("get", "read one key from any node (exit 1 when not found)")
    s.add_argument("key", metavar="KEY")
    add_encoding_flags(s, "KEY is given and the value printed")
    s.add_argument("--raw", action="store_true",
                   help="write the value's exact bytes, no newline")
    s.add_argument("--min-sequence", type=int, default=0, metavar="N",
                   help="read-your-writes: answer once the node has applied sequence N (a "
                   "write's \"sequence\"), waiting up to --timeout")
    s.set_defaults(func=cmd_get)
    s = client_cmd("wait", "wait until a node has applied a sequence (read-your-writes)")
    s.add_argument("--sequence", type=int, required=True, metavar="N",
                   help="the sequence to wait for (a write's \"sequence\")")
    s.set_defaults(func=cmd_wait)
    s = client_cmd("load", "write COUNT entries in write batches; print a JSON summary")
    s.add_argument("--count", type=int, required=True, help="entries to write")
    s.add_argument("--start", type=int, default=0, help="first key index")
    s.add_argument("--key-size", type=int, default=16, help="bytes per key (>= 4)")
    s.add_argument("--value-size", type=int, default=100, help="bytes per value")
    s.add_argument("--batch", type=int, default=1000, help="entries per write batch")
    s.add_argument("--progress", action="store_true", help="print a JSON line per batch")
    semisync_flags(s)
    s.set_defaults(func=cmd_load)
    s = client_cmd("status", "role, state, positions and replicas of a node")
    s.add_argument("--json", action="store_true", help=json_help)
    s.set_defaults(func=cmd_status)
    s = client_cmd("digest", "digest of a node's store at one consistent position")
    s.add_argument("--json", action="store_true", help=json_help)
    s.set_defaults(func=cmd_digest)

    slots = sub.add_parser("slots", help="the primary's replica slots (WAL retention)")
    slots_sub = slots.add_subparsers(dest="slots_command", required=True)
    s = client_cmd("list", "every slot: acked position, lag, state", slots_sub)
    s.add_argument("--json", action="store_true", help=json_help)
    s.set_defaults(func=cmd_slots_list)
    s = client_cmd("drop", "forget a slot (its replica must not be streaming), so that it no "
                   "longer holds WAL; the WAL is pruned later, when nothing else holds it. If "
                   "the replica returns, it resumes if the primary still has its position, "
                   "and bootstraps from a snapshot if not",
                   slots_sub)
    s.add_argument("replica_id", help="the slot's replica id")
    s.set_defaults(func=cmd_slots_drop)

    s = client_cmd("repoint", "make a running replica follow another primary without a "
                   "restart (not saved: also change [replica] primary, which SIGHUP re-reads); "
                   "with a replication token set on it, pass that token as --token")
    s.add_argument("--primary", required=True, help="the new primary's HOST:PORT")
    s.set_defaults(func=cmd_repoint)

    wal = sub.add_parser("wal", help="inspect a stopped or running primary's WAL on disk")
    wal_sub = wal.add_subparsers(dest="wal_command", required=True)
    s = wal_sub.add_parser("check", help="report damage in DATA_DIR/wal without changing "
                           "anything; exit 1 when the primary would refuse to start on it")
    s.add_argument("data_dir", metavar="DATA_DIR", help="the primary's data directory")
    s.add_argument("--json", action="store_true", help=json_help)
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
    s.add_argument("--primary", required=True,
                   help="the primary's HOST:PORT, or its data directory")
    s.add_argument("--replica", required=True,
                   help="the replica's HOST:PORT, or its data directory")
    s.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to find a common position")
    s.add_argument("--config", help="TOML file whose [connector] table says how to connect")
    tls_flags(s)
    s.add_argument("--json", action="store_true", help=json_help)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("plugins", help="list every registered plugin")
    s.add_argument("--json", action="store_true", help=json_help)
    s.set_defaults(func=cmd_plugins)

    add_ha_commands(sub)
    _add_extension_commands(sub)
    return p


def _rpc_text(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "RPC error"
    return f"{name}: {details}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_file)
    try:
        rc = int(args.func(args))
        sys.stdout.flush()  # here, so that a closed pipe is caught below
        return rc
    except KevoReplError as exc:
        print(f"kevo-repl: error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"kevo-repl: {explain_rpc_error(exc, getattr(args, 'target', None))}",
              file=sys.stderr)
        return 3
    except BrokenPipeError:
        # `kevo-repl status | head`: the reader left; stop quietly, and keep Python's exit
        # flush from failing again on the same pipe
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # what a shell reports for SIGPIPE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
