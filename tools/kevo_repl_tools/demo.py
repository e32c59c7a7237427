"""`kevo-repl demo`: one primary and two replicas on loopback, as a user first meets them.

It starts a primary (LMDB) and two replicas (LMDB, and LevelDB when that plugin is
installed) as processes, writes entries with a progress bar while a live table shows each
replica's state, position and lag, kills one replica with SIGKILL halfway, restarts it and
shows that it resumes from its stored position, then compares all three digests. It exits 0
only if they are equal and no entry was applied twice.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from kevo_repl.client.client import Client
from kevo_repl.client.loadgen import load_keys
from kevo_repl.errors import KevoReplError
from kevo_repl.plugin.manager import build_registry
from kevo_repl_tools.bench import _read_probe, batch_lags_ms
from kevo_repl_tools.bench_probe import ENV_PROBE_FILE
from kevo_repl_tools.launcher import NodeProcess, caught_up, wait_until

MARKER = ".kevo-demo"
BATCH = 500


@dataclass
class DemoNode:
    name: str
    proc: NodeProcess
    probe: Path
    down: bool = False
    status: dict[str, Any] = field(default_factory=dict)


class Reporter:
    """Live widgets on a terminal, plain lines otherwise."""

    def __init__(self, nodes: list[DemoNode], total: int, tty: bool) -> None:
        self.nodes = nodes
        self.total = total
        self.tty = tty
        self.written = 0
        self._last_pct = -1
        self._live: Any = None
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Reporter:
        if self.tty:
            from rich.console import Group
            from rich.live import Live
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("writing"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
            )
            self._task = self._progress.add_task("write", total=self.total, rate="")
            self._group = Group
            self._live = Live(self._render(), refresh_per_second=8, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="kevo-repl demo", expand=False)
        for col in ("node", "applier", "state", "position", "lag (entries)", "lag (s)"):
            table.add_column(col)
        for n in self.nodes:
            st = n.status
            if n.down:
                table.add_row(n.name, n.proc.applier or "", "[red]DOWN (killed)[/red]", "-",
                              "-", "-")
                continue
            state = st.get("state", "?")
            if st.get("role") == "primary":
                table.add_row(n.name, n.proc.applier or "", f"[green]{state}[/green]",
                              str(st.get("head_sequence", "?")), "-", "-")
                continue
            colour = {"ERROR": "red", "WAITING_FOR_DATA": "green", "SERVING": "green"}.get(
                state, "yellow")
            table.add_row(
                n.name, n.proc.applier or "", f"[{colour}]{state}[/{colour}]",
                str(st.get("last_applied", "?")), str(st.get("lag_entries", "-")),
                f"{st.get('lag_seconds', 0.0):.3f}" if "lag_seconds" in st else "-",
            )
        return table

    def _render(self) -> Any:
        return self._group(self._progress, self._table())

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def wrote(self, written: int, rate: float) -> None:
        self.written = written
        if self._progress is not None:
            self._progress.update(self._task, completed=written, rate=f"{rate:,.0f} entries/s")
            return
        pct = written * 100 // max(1, self.total)
        if pct // 10 != self._last_pct // 10:
            self._last_pct = pct
            states = ", ".join(
                f"{n.name}={'DOWN' if n.down else n.status.get('state', '?')}"
                f"@{n.status.get('last_applied', '?')}" for n in self.nodes[1:]
            )
            self.say(f"written {written}/{self.total} ({pct}%); {states}")

    def say(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line)
        else:
            print(line, flush=True)


def _prepare_dir(work: Path, keep: bool) -> None:
    if work.exists() and not work.is_dir():
        raise KevoReplError(f"--dir {work} exists and is not a directory; pass another --dir")
    if work.exists() and not keep:
        if any(work.iterdir()) and not (work / MARKER).exists():
            raise KevoReplError(
                f"{work} exists and was not made by the demo; pass another --dir"
            )
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("made by kevo-repl demo; safe to delete\n")


def _poller(nodes: list[DemoNode], stop: threading.Event, reporter: Reporter) -> None:
    while not stop.wait(0.2):
        for n in nodes:
            if n.down:
                continue
            try:
                n.status = n.proc.status()
            except Exception:  # a node being killed or restarted answers nothing
                n.status = {"state": "UNREACHABLE"}
        reporter.refresh()


def run_demo(args: argparse.Namespace) -> int:
    if args.count < 1 or args.rate < 0:
        raise KevoReplError("--count must be >= 1 and --rate >= 0")
    work = Path(args.dir)
    _prepare_dir(work, args.keep)
    tty = sys.stdout.isatty() and not args.no_tty
    appliers = build_registry().names("applier")
    second = "leveldb" if "leveldb" in appliers else "lmdb"
    env_plugins = ",".join(
        p for p in (os.environ.get("KEVO_REPL_PLUGINS", ""), "kevo_repl_tools.bench_probe") if p
    )

    def node(name: str, role: str, applier: str, **kw: Any) -> DemoNode:
        probe = work / f"{name}.probe"
        env = {"KEVO_REPL_PLUGINS": env_plugins, ENV_PROBE_FILE: str(probe)}
        proc = NodeProcess(role, work / name, applier=applier, env=env, die_with_parent=True,
                           **kw)
        return DemoNode(name, proc, probe)

    primary = node("primary", "primary", "lmdb")
    nodes = [primary]
    stop = threading.Event()
    interrupted: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    # closing the terminal (SIGHUP) stops the nodes like Ctrl-C; a demo killed outright
    # takes them along by their parent-death signal
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        print(f"work directory: {work.resolve()} (logs: *.log there)")
        primary.proc.start()
        print(f"{'primary':<10} {'lmdb':<8} {primary.proc.address}  pid {primary.proc.pid}")
        for name, applier in (("replica-1", "lmdb"), ("replica-2", second)):
            n = node(name, "replica", applier, primary=primary.proc.address, replica_id=name)
            n.proc.start()
            nodes.append(n)
            print(f"{name:<10} {applier:<8} {n.proc.address}  pid {n.proc.pid}")
        if second != "leveldb":
            print("(kevo-repl-leveldb is not installed: both replicas use LMDB)")
        return _run(args, work, nodes, stop, tty)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every node the demo started", file=sys.stderr)
        return 130
    finally:
        stop.set()
        for n in reversed(nodes):
            n.proc.terminate(timeout=10)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        pids = ", ".join(str(n.proc.pid) for n in nodes if n.proc.proc is not None)
        print(f"stopped node processes: {pids}")


def _run(
    args: argparse.Namespace, work: Path, nodes: list[DemoNode], stop: threading.Event,
    tty: bool,
) -> int:
    primary, victim = nodes[0], nodes[-1]
    total = args.count
    reporter = Reporter(nodes, total, tty)
    poller = threading.Thread(target=_poller, args=(nodes, stop, reporter), daemon=True)
    events: list[str] = []
    resumed_ok = True
    for n in nodes:  # the first progress line shows real states, not "?"
        n.status = n.proc.status()
    with reporter:
        poller.start()
        started = time.perf_counter()
        written = 0
        killed_at: int | None = None
        with Client(primary.proc.address, 30.0) as client:
            for muts in load_keys(total, 0, 16, 100, BATCH):
                if args.rate > 0:  # paced, so the live table has time to show the story
                    due = started + written / args.rate
                    pause = due - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                client.write(muts)
                written += len(muts)
                reporter.wrote(written, written / max(1e-9, time.perf_counter() - started))
                if killed_at is None and written >= total // 2:
                    killed_at = _kill(victim, reporter, events)
                elif killed_at is not None and victim.down and written >= total * 3 // 4:
                    resumed_ok = _restart(victim, killed_at, reporter, events)
        write_seconds = time.perf_counter() - started
        if victim.down:  # fewer than 4 batches: restart after the writes
            resumed_ok = _restart(victim, killed_at or 0, reporter, events)
        replicas = [n.proc for n in nodes[1:]]
        wait_until(lambda: caught_up(primary.proc, replicas), args.timeout,
                   "the replicas to catch up")
        total_seconds = time.perf_counter() - started
        stop.set()
        poller.join(5)
        for n in nodes:
            n.status = n.proc.status()
        reporter.refresh()
    return _summary(nodes, total, write_seconds, total_seconds, resumed_ok, events)


def _kill(victim: DemoNode, reporter: Reporter, events: list[str]) -> int:
    try:
        before = victim.proc.status()["last_applied"]
    except Exception:
        before = 0
    victim.proc.kill()
    victim.down = True
    msg = f"SIGKILL {victim.name} (pid {victim.proc.pid}) at position >= {before}"
    events.append(msg)
    reporter.say(msg)
    return int(before)


def _restart(victim: DemoNode, killed_at: int, reporter: Reporter, events: list[str]) -> bool:
    old_pid = victim.proc.pid
    victim.proc.start()
    st = victim.proc.status()
    victim.status = st
    victim.down = False
    resumed = st["last_applied"]
    # its position is the one it had durably stored: at least what it reported before the
    # kill, and every entry counted once
    ok = bool(resumed >= killed_at and st["applied_entries"] == resumed)
    msg = (
        f"restarted {victim.name} (new pid {victim.proc.pid}, was {old_pid}): resumes from "
        f"its stored position {resumed} (was >= {killed_at} before the kill), "
        f"{'no entry applied twice' if ok else 'POSITION PROBLEM'}"
    )
    events.append(msg)
    reporter.say(msg)
    return ok


def _summary(
    nodes: list[DemoNode], total: int, write_seconds: float, total_seconds: float,
    resumed_ok: bool, events: list[str],
) -> int:
    primary = nodes[0]
    digests = {n.name: n.proc.digest() for n in nodes}
    p_probe = _read_probe(primary.probe)

    def p99(node: DemoNode) -> float:
        lags = sorted(batch_lags_ms(p_probe, _read_probe(node.probe)))
        return lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else float("nan")

    exactly_once = all(
        n.status.get("applied_entries") == n.status.get("last_applied") for n in nodes
    )
    same = len({d["digest"] for d in digests.values()}) == 1 and len(
        {d["sequence"] for d in digests.values()}
    ) == 1
    print()
    print(f"entries written:   {total}")
    print(f"write throughput:  {total / write_seconds:,.0f} entries/s "
          f"({write_seconds:.2f} s; all replicas caught up after {total_seconds:.2f} s)")
    live, killed = nodes[1], nodes[-1]
    print(f"lag p99:           {live.name} {p99(live):.1f} ms; {killed.name} {p99(killed):.1f} ms "
          "(includes the time it was down) - from primary durable to replica durable, per batch")
    for line in events:
        print(f"event:             {line}")
    for name, d in digests.items():
        print(f"digest {name:<10} sequence={d['sequence']} keys={d['keys']} {d['digest']}")
    ok = same and exactly_once and resumed_ok
    if ok:
        print("RESULT: OK - all three stores are identical at the same sequence, "
              "every entry applied exactly once")
        return 0
    problems = []
    if not same:
        problems.append("digests differ")
    if not exactly_once:
        problems.append("an applied-entry count differs from the position")
    if not resumed_ok:
        problems.append("the restarted replica did not resume from its stored position")
    print("RESULT: FAIL - " + "; ".join(problems))
    return 1
