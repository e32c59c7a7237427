"""The subcommands this distribution adds to `kevo-repl`: demo, bench and chaos.

Registered through the `kevo_repl.commands` entry-point group. Each `add_*` adds its parser;
the modules that do the work are imported only when the command runs, so `kevo-repl` starts
without them.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kevo_repl.errors import KevoReplError


def cmd_demo(args: argparse.Namespace) -> int:
    if args.ha:
        from kevo_repl_tools.demo_ha import run_ha_demo

        return run_ha_demo(args)
    from kevo_repl_tools.demo import run_demo

    return run_demo(args)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, not {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, not {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    from kevo_repl_tools import bench

    defaults = bench.BenchOptions()
    seconds = args.seconds
    if seconds is None:
        seconds = 3.0 if args.scenario == "write" else defaults.seconds
    opts = bench.BenchOptions(
        applier=args.applier,
        codec=args.codec,
        count=args.count,
        rate=args.rate,
        seconds=seconds,
        dir=args.dir,
        writers=args.writers,
        batches=args.batches,
        stalled=not args.no_stalled,
        embedded=not args.no_embedded,
        client_processes=args.client_processes,
        raw_batch=args.raw_batch,
        lag_batch=args.lag_batch,
        vs_redis=args.vs_redis,
        redis_requests=args.redis_requests,
        timeout=args.timeout,
    )
    result = bench.run(args.scenario, opts, runs=args.runs)
    if args.plot:
        from kevo_repl_tools.bench_plot import plot

        plot([result], args.plot)
    print(json.dumps(result) if args.json else bench.format_table(result))
    return 0


def _name_list(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, not {text!r}")
    return names


def cmd_chaos(args: argparse.Namespace) -> int:
    import random
    from pathlib import Path

    from kevo_repl_tools.chaos import ChaosOptions, run_chaos
    from kevo_repl_tools.chaos_report import format_report
    from kevo_repl_tools.chaos_schedule import DEFAULT_KINDS, format_schedule, generate_schedule

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    kinds = tuple(args.kinds) if args.kinds else DEFAULT_KINDS
    targets = tuple(args.targets) if args.targets else None
    try:
        schedule = generate_schedule(seed, args.duration, kinds, targets)
    except ValueError as exc:
        raise KevoReplError(str(exc)) from None
    if args.schedule_only:
        print(f"schedule of seed {seed} ({args.duration:g}s):")
        print(format_schedule(schedule) or "  (no faults)")
        return 0
    if args.seed is None and not args.json:
        print(f"chaos: seed {seed}", flush=True)
    opts = ChaosOptions(
        seed=seed,
        duration=args.duration,
        dir=Path(args.dir) if args.dir else None,
        kinds=kinds,
        targets=targets,
        writers=args.writers,
        rate=args.rate,
        converge_timeout=args.converge_timeout,
    )
    if args.replica_appliers:
        if len(args.replica_appliers) != 2:
            raise KevoReplError("--replica-appliers takes two names: r1's and r2's")
        opts.replica_appliers = (args.replica_appliers[0], args.replica_appliers[1])
    try:
        report = run_chaos(opts)
    except ValueError as exc:
        raise KevoReplError(str(exc)) from None
    print(json.dumps(report.as_dict(), sort_keys=True) if args.json else format_report(report))
    return 0 if report.ok else 1



def add_arguments(s: argparse.ArgumentParser, default_dir: str = "./kevo-demo") -> None:
    s.add_argument("--dir", default=default_dir,
                   help="work directory, made fresh each run (default ./kevo-demo)")
    s.add_argument("--keep", action="store_true",
                   help="reuse the work directory's data instead of starting clean")
    s.add_argument("--count", type=int, default=100_000, help="entries to write")
    s.add_argument("--rate", type=int, default=20_000,
                   help="entries written per second (0: as fast as the primary takes them)")
    s.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for the replicas to catch up")
    s.add_argument("--no-tty", action="store_true",
                   help="plain lines instead of live widgets (automatic when not a terminal)")


def add_demo(sub: Any) -> None:
    s = sub.add_parser("demo", help="a primary and two replicas on loopback: writes, a "
                       "replica killed and resumed, digests compared")
    add_arguments(s)
    s.add_argument("--ha", action="store_true", help="etcd and three `kevo-repl ha` nodes: "
                   "the primary killed, a replica elected, the old primary rejoining")
    s.set_defaults(func=cmd_demo)


def add_bench(sub: Any) -> None:
    s = sub.add_parser("bench", help="measure catch-up, live lag or write throughput")
    s.add_argument("scenario", choices=["catchup", "lag", "write"])
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--count", type=int, default=500_000, help="catchup: entries (16 B keys, "
                   "100 B values)")
    s.add_argument("--applier", default="lmdb", help="store backend of every node")
    s.add_argument("--codec", default="none", help="compressor name of every node")
    s.add_argument("--rate", type=int, default=20_000, help="lag: entries per second")
    s.add_argument("--seconds", type=float, default=None,
                   help="lag: seconds of writing (default 10); write: seconds per cell "
                   "(default 3)")
    s.add_argument("--dir", default=None, help="work directory (default: a temp dir, removed)")
    s.add_argument("--writers", type=_int_list, default=[1, 8, 64],
                   help="write: concurrent writers per cell, comma-separated")
    s.add_argument("--batches", type=_int_list, default=[1, 1000],
                   help="write: entries per write, comma-separated")
    s.add_argument("--no-stalled", action="store_true",
                   help="write: skip the cells with a stalled replica")
    s.add_argument("--no-embedded", action="store_true",
                   help="write: skip the embedded API cells (open_primary in this process)")
    s.add_argument("--client-processes", type=int, default=1,
                   help="write: client processes sharing each stream cell's writers (one "
                   "Python client drives about 15k writes/s)")
    s.add_argument("--raw-batch", type=int, default=1000,
                   help="catchup: entries per synced batch of the raw baseline")
    s.add_argument("--lag-batch", type=int, default=100, help="lag: entries per write")
    s.add_argument("--runs", type=int, default=1, help="repeat; report medians")
    s.add_argument("--vs-redis", action="store_true",
                   help="catchup and write: Redis anchors in the same run, no persistence and AOF "
                   "always (needs redis-server; write also redis-benchmark; skipped if absent)")
    s.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw the result against its anchors into FILE.png (matplotlib)")
    s.add_argument("--redis-requests", type=int, default=200_000,
                   help="write --vs-redis: SETs redis-benchmark sends per persistence setting")
    s.add_argument("--timeout", type=float, default=600.0, help="bound on any single wait")
    s.set_defaults(func=cmd_bench)


def add_chaos(sub: Any) -> None:
    s = sub.add_parser("chaos", help="seeded random faults (kill, freeze, cut, stall, delay, "
                       "corrupt, disk errors, falling out of retention) against a live "
                       "cluster, checked against the guarantees; exit 1 on any violation")
    s.add_argument("--seed", type=int, default=None,
                   help="the schedule's seed (default: a random one, printed)")
    s.add_argument("--duration", type=float, default=60.0, help="seconds of faults")
    s.add_argument("--dir", default=None, help="make the run directory here and keep it "
                   "(default: a temp dir, kept only when the run fails)")
    s.add_argument("--json", action="store_true", help="print the report as one JSON object")
    s.add_argument("--kinds", type=_name_list, default=None,
                   help="comma-separated fault kinds (default: every enabled kind)")
    s.add_argument("--targets", type=_name_list, default=None,
                   help="comma-separated nodes faults may hit: primary, r1, r2 (default all)")
    s.add_argument("--writers", type=int, default=2, help="writer threads")
    s.add_argument("--rate", type=int, default=3000,
                   help="entries per second, all writers together")
    s.add_argument("--replica-appliers", type=_name_list, default=None,
                   help="appliers of r1,r2 (default faulty-lmdb,faulty-leveldb)")
    s.add_argument("--converge-timeout", type=float, default=60.0,
                   help="seconds the replicas get to reach the primary's digest")
    s.add_argument("--schedule-only", action="store_true",
                   help="print the seed's fault schedule and exit")
    s.set_defaults(func=cmd_chaos)


def cmd_chaos_ha(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

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
