"""The `promote` and `rejoin` commands (kevo_repl.ha)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from typing import Any

from kevo_repl import config as config_mod


def _offline_config(args: argparse.Namespace) -> config_mod.Config:
    cfg = config_mod.load(args.config)
    cfg.node.data_dir = args.data_dir
    if args.applier is not None:
        cfg.applier.name = args.applier
    return cfg


def cmd_promote(args: argparse.Namespace) -> int:
    if args.target:  # a running replica, in place (the Promote admin call)
        from kevo_repl.client.client import Client

        connector = config_mod.load(args.config).connector
        if args.token is not None:
            connector.token = args.token
        with Client(args.target, timeout=args.timeout, connector=connector) as c:
            print(json.dumps(c.promote(), sort_keys=True))
        return 0
    if not args.data_dir:
        raise SystemExit("kevo-repl promote: give --data-dir (a stopped replica) or --target "
                         "(a running one)")
    from kevo_repl.ha.promote import promote
    from kevo_repl.plugin.manager import build_registry

    result = promote(_offline_config(args), build_registry())
    print(json.dumps(asdict(result), sort_keys=True))
    return 0


def cmd_rejoin(args: argparse.Namespace) -> int:
    from kevo_repl.ha.rejoin import rejoin
    from kevo_repl.plugin.manager import build_registry

    result = rejoin(_offline_config(args), build_registry(), args.primary, timeout=args.timeout)
    print(json.dumps(asdict(result), sort_keys=True))
    return 0


def cmd_ha(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from kevo_repl.ha.agent import Agent
    from kevo_repl.plugin.manager import build_registry

    cfg = config_mod.load(args.config)
    for flag, section, key in (
        ("data_dir", cfg.node, "data_dir"), ("listen", cfg.node, "listen"),
        ("applier", cfg.applier, "name"), ("etcd", cfg.ha, "etcd"),
        ("cluster", cfg.ha, "cluster"), ("name", cfg.ha, "name"), ("ttl_s", cfg.ha, "ttl_s"),
    ):
        value = getattr(args, flag)
        if value is not None:
            setattr(section, key, value)
    agent = Agent(cfg, build_registry(), config_path=args.config, log_level=args.log_level)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        print(json.dumps({"ha": agent.name, "address": agent.address}), flush=True)
        await agent.run()

    asyncio.run(run())
    return 0


def add_ha_commands(sub: Any) -> None:
    s = sub.add_parser("ha", help="run a node of a cluster that fails over automatically "
                       "through etcd ([ha] etcd, cluster, name, ttl_s)")
    s.add_argument("--config", help="TOML file ([node], [applier], [ha], ...)")
    s.add_argument("--data-dir", help="data directory")
    s.add_argument("--listen", help="HOST:PORT of the node (port 0 picks one for the agent's "
                   "lifetime)")
    s.add_argument("--applier", help="store backend")
    s.add_argument("--etcd", help="etcd's HOST:PORT")
    s.add_argument("--cluster", help="the cluster's name in etcd")
    s.add_argument("--name", help="this node's name (and replica id)")
    s.add_argument("--ttl-s", type=int, help="the primary's lease TTL in seconds")
    s.set_defaults(func=cmd_ha)

    s = sub.add_parser("promote", help="make a replica the primary of a new epoch, "
                       "continuing from its durable position: a stopped one (--data-dir; then "
                       "start it as a primary) or a running one in place (--target)")
    s.add_argument("--data-dir", help="the stopped replica's data directory")
    s.add_argument("--target", help="a running replica's HOST:PORT: promoted without a "
                   "restart (an admin call: with a replication token set on it, pass that "
                   "token as --token)")
    s.add_argument("--token", default=os.environ.get("KEVO_REPL_TOKEN"),
                   help="with --target: the node's token ($KEVO_REPL_TOKEN)")
    s.add_argument("--timeout", type=float, default=60.0, help="with --target: seconds")
    s.add_argument("--applier", help="its applier (default: as recorded in DATA_DIR)")
    s.add_argument("--config", help="its TOML file")
    s.set_defaults(func=cmd_promote)

    s = sub.add_parser("rejoin", help="turn a stopped old primary or forked replica into a "
                       "replica of a newer primary: report and set aside what it held past the "
                       "fork point; then start it as a replica of that primary")
    s.add_argument("--data-dir", required=True, help="the stopped node's data directory")
    s.add_argument("--primary", required=True, help="the new primary's HOST:PORT")
    s.add_argument("--applier", help="its applier (default: as recorded in DATA_DIR)")
    s.add_argument("--config", help="its TOML file ([connector] reaches the new primary)")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    s.set_defaults(func=cmd_rejoin)
