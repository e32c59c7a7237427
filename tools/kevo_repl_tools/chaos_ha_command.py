"""`kevo-repl chaos-ha`: the HA fault kinds against a real etcd (kevo_repl_tools.chaos_ha)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any


def cmd_chaos_ha(args: argparse.Namespace) -> int:
    from kevo_repl_tools.chaos_ha import HA_KINDS, run_ha_chaos

    kinds = tuple(k for k in args.kinds.split(",") if k) if args.kinds else HA_KINDS
    with tempfile.TemporaryDirectory(prefix="kevo-chaos-ha-") as tmp:
        root = Path(args.dir) if args.dir else Path(tmp)
        result = run_ha_chaos(root, seed=args.seed, duration_s=args.duration,
                              ttl_s=args.ttl_s, applier=args.applier, kinds=kinds)
    print(json.dumps(result.summary(), sort_keys=True))
    return 1 if result.violations else 0


def add_chaos_ha(sub: Any) -> None:
    s = sub.add_parser("chaos-ha", help="seeded HA faults (primary_kill_failover, "
                       "primary_partition, etcd_restart) against etcd and three `kevo-repl ha` "
                       "nodes under semi-sync writes; exit 1 on any violation")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--duration", type=float, default=60.0, help="seconds of faults")
    s.add_argument("--ttl-s", type=int, default=2, help="the primary's lease TTL")
    s.add_argument("--applier", default="lmdb")
    s.add_argument("--kinds", default="", help="comma-separated subset of the HA kinds")
    s.add_argument("--dir", default="", help="keep the run's data here (default: a temp dir)")
    s.set_defaults(func=cmd_chaos_ha)
