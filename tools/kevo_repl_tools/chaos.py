"""Chaos runs: seeded random faults over a live cluster, checked against the guarantees.

One run (`run_chaos`): a primary and two replicas (r1 on LMDB, r2 on LevelDB by default) as
node processes on loopback, each replica reaching the primary through its own `FaultProxy`;
writer threads issue 50-500-entry batches continuously; a fault schedule generated up front
from the seed (`kevo_repl_tools.chaos_schedule`) is executed against the cluster: SIGKILL and
restart, SIGSTOP / SIGCONT, connection cut, stall, delay, corrupted bytes in flight, and
ENOSPC injected into an applier (through the `faulty-*` appliers of
`kevo_repl_tools.chaos_plugins`). When the schedule is done everything is healed, the writers stop,
the replicas must converge to the primary's digest within a bound, and the stores are read
back. `kevo_repl_tools.chaos_checker` lists what is checked. The report names the seed, the
schedule and the executed timeline, so a failing run can be rerun with the same schedule.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from kevo_repl.client.client import Client, SemiSync
from kevo_repl.errors import KevoReplError
from kevo_repl.plugin.manager import ENV_EXTRA_PLUGINS, Registry, get_plugin_manager
from kevo_repl.protocol.codec import Op
from kevo_repl.storage.applier import open_registered
from kevo_repl_tools import chaos_attacks, chaos_plugins
from kevo_repl_tools.chaos_checker import (
    VALUE_MARKER,
    Checker,
    ReturnedWrite,
    Violation,
    WriteLog,
    key_of,
    process_start_ticks,
    read_rss_mb,
    value_of,
)
from kevo_repl_tools.chaos_schedule import (
    DEFAULT_KINDS,
    REPLICAS,
    Fault,
    dump_schedule,
    generate_schedule,
)
from kevo_repl_tools.faultproxy import FaultProxy
from kevo_repl_tools.launcher import NodeProcess

log = logging.getLogger(__name__)

_PLUGIN_MODULE = "kevo_repl_tools.chaos_plugins"
#: bounds on single operations, so every wait in a run ends by itself
_CALL_TIMEOUT_S = 10.0
_STATUS_TIMEOUT_S = 2.0
_START_TIMEOUT_S = 30.0
#: bytes of a WAL segment's header (kevo_repl.storage.wal); wal_bitflip flips bits after it
_WAL_SEGMENT_HEADER = 16
_JOIN_TIMEOUT_S = 20.0

_PRIMARY_TOML = """\
[stream]
heartbeat_s = 0.5
stall_after_s = 2.0
[snapshot]
hold_s = 3.0
[server]
keepalive_s = 2.0
keepalive_timeout_s = 2.0
"""
_WAL_TOML = """\
[wal]
segment_bytes = 4194304
"""
#: the primary's [snapshot] hold_s in a chaos run (stalled_snapshot waits it out)
_SNAPSHOT_HOLD_S = 3.0
#: writes of an unread WriteStream the primary may read before it must have stopped
_UNREAD_WRITES_BOUND = 1_000_000
#: the kinds that are client-side attacks on the primary (kevo_repl_tools.chaos_attacks)
_ATTACKS = ("slot_flood", "stalled_snapshot", "unread_writestream", "rogue_replica")
#: with the retention fault: small segments and a small cap, so a replica that is down for a
#: few seconds while writes go on loses its place in the WAL and must bootstrap
_RETENTION_TOML = """\
[wal]
segment_bytes = 262144
[retention]
max_retained_bytes = 1048576
"""
_REPLICA_TOML = """\
[replica]
backoff_initial_s = 0.05
backoff_max_s = 1.0
[stream]
heartbeat_s = 0.5
stall_after_s = 2.0
[connector]
keepalive_s = 2.0
keepalive_timeout_s = 2.0
[server]
keepalive_s = 2.0
keepalive_timeout_s = 2.0
"""


@dataclass
class ChaosOptions:
    seed: int
    #: seconds of faults (the run takes longer: start-up, convergence, checks)
    duration: float = 60.0
    #: where the run directory is made (None: a temporary one, removed when the run passes)
    dir: Path | None = None
    kinds: tuple[str, ...] = DEFAULT_KINDS
    #: restrict faults to some of primary, r1, r2 (None: all)
    targets: tuple[str, ...] | None = None
    primary_applier: str = "faulty-lmdb"
    replica_appliers: tuple[str, str] = ("faulty-lmdb", "faulty-leveldb")
    writers: int = 2
    #: entries per second, all writers together (paced, not a target to reach)
    rate: int = 3000
    batch: tuple[int, int] = (50, 500)
    #: seconds the replicas get to reach the primary's digest once faults stop
    converge_timeout: float = 60.0
    rss_limit_mb: float = 500.0
    sample_interval: float = 0.25
    #: seconds a broken-* applier waits between committing its position and its data
    broken_window_s: float = 0.05
    #: every n-th write of writers 1, 2, ... is semi-synchronous (one replica, durable,
    #: 2 s; alternately degrading and failing on timeout); 0: none
    semisync_every: int = 3
    #: keep the run directory even when the run passes
    keep: bool = False


@dataclass(frozen=True)
class TimelineEvent:
    #: seconds after the run started
    t: float
    fault: int
    action: str
    text: str

    def __str__(self) -> str:
        fault = f"#{self.fault}" if self.fault >= 0 else "--"
        return f"  {self.t:8.2f}s {fault:>5} {self.action:<5} {self.text}"


@dataclass
class ChaosReport:
    seed: int
    duration_s: float
    kinds: list[str]
    targets: list[str] | None
    appliers: dict[str, str]
    run_dir: str
    schedule: list[Fault]
    timeline: list[TimelineEvent] = field(default_factory=list)
    faults_per_kind: dict[str, int] = field(default_factory=dict)
    writes_returned: int = 0
    entries_returned: int = 0
    writes_failed: int = 0
    last_sequence: int = 0
    #: semi-synchronous writes: returned acked by a replica, returned degraded, failed
    semisync: dict[str, int] = field(default_factory=dict)
    #: snapshot installs (bootstraps) per replica
    bootstraps: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    corrupted_chunks: int = 0
    convergence_s: dict[str, float | None] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    batches_applied: dict[str, int] = field(default_factory=dict)
    stores: dict[str, dict[str, int]] = field(default_factory=dict)
    processes_started: int = 0
    elapsed_s: float = 0.0
    violations: list[Violation] = field(default_factory=list)
    run_dir_kept: bool = True

    @property
    def ok(self) -> bool:
        return not self.violations

    def rerun_command(self) -> str:
        cmd = f"kevo-repl chaos --seed {self.seed} --duration {self.duration_s:g}"
        if self.kinds != list(DEFAULT_KINDS):
            cmd += f" --kinds {','.join(self.kinds)}"
        if self.targets is not None:
            cmd += f" --targets {','.join(self.targets)}"
        return cmd

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["rerun"] = self.rerun_command()
        return d


class _Node:
    """A node process and what the runner knows about it."""

    def __init__(self, name: str, proc: NodeProcess) -> None:
        self.name = name
        self.proc = proc
        #: up, down (killed or restarting), frozen
        self.state = "down"
        self.restarts = 0


class ChaosRun:
    def __init__(self, opts: ChaosOptions) -> None:
        if opts.duration <= 0 or opts.writers < 1 or opts.rate < 1:
            raise ValueError("duration, writers and rate must be positive")
        self.opts = opts
        self.schedule = generate_schedule(opts.seed, opts.duration, opts.kinds, opts.targets)
        # loaded now, so that the stores are read at the end with the code the run started
        # with, and an unknown applier fails before anything starts
        self.registry = self._registry()
        for name in (opts.primary_applier, *opts.replica_appliers):
            self.registry.get("applier", name)
        self._temp = opts.dir is None
        parent = Path(opts.dir) if opts.dir is not None else None
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"chaos-seed{opts.seed}-", dir=parent))
        self.started = self.t0 = time.monotonic()
        self.checker = Checker(self.t0, opts.rss_limit_mb)
        self.writes = WriteLog(opts.writers)
        self.nodes: dict[str, _Node] = {}
        self.proxies: dict[str, FaultProxy] = {}
        #: every node process started: (pid, start ticks), the start time telling a recycled
        #: PID (pid_max may be 32768 on a busy machine) from a leaked process
        self.pids: list[tuple[int, int | None]] = []
        self.timeline: list[TimelineEvent] = []
        self.executed: Counter[str] = Counter()
        self.convergence: dict[str, float | None] = {}
        self.stores: dict[str, dict[str, int]] = {}
        self.batches: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop_writers = threading.Event()
        self._stop_sampler = threading.Event()
        self._threads: list[threading.Thread] = []
        self._primary_address = ""
        self._corrupt_base: dict[int, int] = {}
        #: attacks in progress (slot_flood, stalled_snapshot, unread_writestream): the
        #: thread, the event that ends it, and where it puts its result
        self._attacks: dict[int, tuple[threading.Thread, threading.Event,
                                       list[chaos_attacks.AttackResult]]] = {}
        #: wal_bitflip faults in progress: (segment, offset, mask) to undo at their end
        self._bitflips: dict[int, tuple[Path, int, int]] = {}
        #: semi-sync writes a replica acknowledged as durable: (last sequence, when) per
        #: replica, until a status sample shows its position at or past them
        self._claims: dict[str, list[tuple[int, float]]] = {r: [] for r in REPLICAS}
        self.semisync: Counter[str] = Counter()
        #: highest `bootstraps` each replica process reported, by (node, pid)
        self._bootstraps: dict[tuple[str, int], int] = {}

    # -- helpers -------------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, fault: int, action: str, text: str) -> None:
        ev = TimelineEvent(round(self.now(), 3), fault, action, text)
        log.info("chaos %s", str(ev).strip())
        with self._lock:
            self.timeline.append(ev)

    def _env(self) -> dict[str, str]:
        plugins = [m for m in os.environ.get(ENV_EXTRA_PLUGINS, "").split(",") if m.strip()]
        return {
            ENV_EXTRA_PLUGINS: ",".join([*plugins, _PLUGIN_MODULE]),
            chaos_plugins.ENV_APPLY_LOG: str(self.run_dir / "apply.log"),
            chaos_plugins.ENV_BROKEN_WINDOW: str(self.opts.broken_window_s),
        }

    def _start_node(self, node: _Node) -> None:
        node.proc.start(_START_TIMEOUT_S)
        with self._lock:
            self.pids.append((node.proc.pid, process_start_ticks(node.proc.pid)))
            node.state = "up"

    # -- cluster -------------------------------------------------------------------------------

    def start_cluster(self) -> None:
        opts = self.opts
        pconf = self.run_dir / "primary.toml"
        pconf.write_text(
            _PRIMARY_TOML + (_RETENTION_TOML if "retention" in opts.kinds else _WAL_TOML)
        )
        rconf = self.run_dir / "replica.toml"
        rconf.write_text(_REPLICA_TOML)
        env = self._env()
        primary = _Node("primary", NodeProcess(
            "primary", self.run_dir / "primary", applier=opts.primary_applier, config=pconf,
            env=env,
        ))
        self.nodes["primary"] = primary
        self._start_node(primary)
        self._primary_address = primary.proc.address
        for i, (name, applier) in enumerate(zip(REPLICAS, opts.replica_appliers, strict=True)):
            proxy = FaultProxy(self._primary_address, seed=opts.seed * 31 + i)
            self.proxies[name] = proxy
            proxy.start()
            node = _Node(name, NodeProcess(
                "replica", self.run_dir / name, primary=proxy.address, replica_id=name,
                applier=applier, config=rconf, env=env,
            ))
            self.nodes[name] = node
            self._start_node(node)

    # -- writers -------------------------------------------------------------------------------

    def _writer(self, idx: int) -> None:
        opts = self.opts
        rng = random.Random(opts.seed * 7919 + idx)
        per_writer = opts.rate / opts.writers
        client: Client | None = None
        backoff = 0.05
        calls = 0
        try:
            while not self._stop_writers.is_set():
                count = rng.randint(*opts.batch)
                n0 = self.writes.reserve(idx, count)
                keys = [key_of(idx, n) for n in range(n0, n0 + count)]
                muts = [(int(Op.PUT), k, value_of(k)) for k in keys]
                calls += 1
                sync = None
                if idx > 0 and opts.semisync_every and calls % opts.semisync_every == 0:
                    sync = SemiSync(1, durable=True, timeout_s=2.0, degrade=calls % 2 == 0)
                try:
                    if client is None:
                        client = Client(self._primary_address, timeout=_CALL_TIMEOUT_S)
                    resp = client.write_full(muts, sync)
                    first, last = resp.first_sequence, resp.last_sequence
                except Exception as exc:
                    # primary down, frozen or refusing writes: nothing is recorded for this
                    # call; a fresh channel after a backoff (gRPC's own reconnect backoff
                    # grows far beyond our faults)
                    self.writes.add_failure(count)
                    if sync is not None:
                        self.semisync["failed"] += 1
                    log.debug("writer %d: write failed: %s", idx, exc)
                    if client is not None:
                        client.close()
                        client = None
                    self._stop_writers.wait(backoff * rng.uniform(0.5, 1.0))
                    backoff = min(1.0, backoff * 2)
                    continue
                backoff = 0.05
                write = ReturnedWrite(idx, n0, count, first, last, round(self.now(), 3))
                self.writes.add(write)
                self.checker.check_written(write)
                if sync is not None:
                    self._semisync_returned(write, list(resp.acked_by), resp.degraded)
                self._stop_writers.wait(rng.uniform(0.5, 1.5) * count / per_writer)
        finally:
            if client is not None:
                client.close()

    def _semisync_returned(self, write: ReturnedWrite, acked_by: list[str], degraded: bool) -> None:
        """A semi-synchronous write returned: unless degraded, a replica acknowledged it as
        durable, so that replica's position must be at or past it from now on."""
        if degraded:
            self.semisync["degraded"] += 1
            return
        self.semisync["acked"] += 1
        if not acked_by:
            self.checker.violate("durability", f"semi-sync {write.describe()} returned, not "
                                 "degraded, but acknowledged by no replica")
        now = time.monotonic()
        with self._lock:
            for rid in acked_by:
                if rid in self._claims:
                    self._claims[rid].append((write.last, now))

    def _check_claims(self, node: str, asked_at: float, last_applied: int) -> None:
        with self._lock:
            claims = self._claims.get(node, [])
            due = [c for c in claims if c[1] <= asked_at]
            self._claims[node] = [c for c in claims if c[1] > asked_at]
        broken = [seq for seq, _ in due if seq > last_applied]
        if broken:
            self.checker.violate("durability", f"{node} acknowledged semi-sync writes up to "
                                 f"{max(broken)} as durable, but its position is "
                                 f"{last_applied}")

    # -- sampling ------------------------------------------------------------------------------

    def _sampler(self) -> None:
        interval = self.opts.sample_interval
        while not self._stop_sampler.wait(interval):
            for node in list(self.nodes.values()):
                self._sample(node)

    def _sample(self, node: _Node) -> None:
        with self._lock:
            state = node.state
            proc = node.proc.proc
            unexpected = state == "up" and proc is not None and proc.poll() is not None
            if unexpected:
                node.state = "down"  # reported once; the heal restarts it
        if proc is None:
            return
        if unexpected:
            self.checker.violate("crash", f"{node.name} (pid {proc.pid}) exited by itself "
                                 f"with code {proc.returncode}:\n{node.proc.log_tail(10)}")
            return
        rss = read_rss_mb(proc.pid)
        if rss is not None:
            self.checker.observe_rss(node.name, rss)
        if state != "up":
            return
        asked_at = time.monotonic()
        try:
            with Client(node.proc.address, timeout=_STATUS_TIMEOUT_S) as c:
                st = c.status()
        except Exception:
            return  # killed or frozen meanwhile, or still starting
        if node.name == "primary":
            self.checker.observe_position("primary", "head_sequence", st["head_sequence"])
        else:
            self.checker.observe_position(node.name, "last_applied", st["last_applied"])
            self._check_claims(node.name, asked_at, st["last_applied"])
            if st.get("bootstraps"):
                key = (node.name, proc.pid)
                with self._lock:
                    self._bootstraps[key] = max(self._bootstraps.get(key, 0), st["bootstraps"])

    # -- faults --------------------------------------------------------------------------------

    def execute_schedule(self) -> None:
        actions: list[tuple[float, int, int, str, Fault]] = []
        for f in self.schedule:
            actions.append((f.at, 1, f.id, "start", f))
            actions.append((f.ends, 0, f.id, "end", f))
        actions.sort(key=lambda a: a[:3])
        for at, _, _, action, fault in actions:
            wait = at - self.now()
            if wait > 0:
                time.sleep(wait)
            try:
                if action == "start":
                    self.executed[fault.kind] += 1
                    self._start_fault(fault)
                else:
                    self._end_fault(fault)
            except Exception as exc:
                log.exception("chaos: fault #%d %s failed", fault.id, action)
                self.checker.violate("crash", f"fault #{fault.id} ({fault.describe()}): "
                                     f"{action} failed: {exc}")

    def _start_fault(self, f: Fault) -> None:
        node = self.nodes[f.target]
        self.event(f.id, "start", f.describe())
        if f.kind in ("kill", "retention"):
            with self._lock:
                node.state = "down"
            node.proc.kill()
        elif f.kind == "restart":
            with self._lock:
                node.state = "down"
            code = node.proc.terminate()
            if code != 0:
                self.checker.violate("crash", f"{f.target} exited with code {code} on SIGTERM "
                                     f"(fault #{f.id}):\n{node.proc.log_tail(10)}")
        elif f.kind == "freeze":
            with self._lock:
                node.state = "frozen"
            os.kill(node.proc.pid, signal.SIGSTOP)
        elif f.kind == "cut":
            self.proxies[f.target].cut()
        elif f.kind == "stall":
            self.proxies[f.target].stall()
        elif f.kind == "delay":
            self.proxies[f.target].delay(f.param)
        elif f.kind in ("corrupt", "corrupt_any"):
            proxy = self.proxies[f.target]
            self._corrupt_base[f.id] = proxy.corrupted
            # every value the writers write holds VALUE_MARKER: "corrupt" hits entry data
            proxy.corrupt(int(f.param), VALUE_MARKER if f.kind == "corrupt" else b"")
        elif f.kind == "wal_bitflip":
            with self._lock:
                node.state = "down"
            node.proc.kill()
            self._flip_wal_bit(node, f)
        elif f.kind in _ATTACKS:
            self._start_attack(f)
        elif f.kind == "disk_error":
            control = node.proc.data_dir / chaos_plugins.DISK_ERROR_FILE
            tmp = control.with_name(control.name + ".tmp")
            tmp.write_text(f"{int(f.param)}\n")
            os.replace(tmp, control)
        else:
            raise ValueError(f"fault kind {f.kind!r} is not implemented by this runner")

    def _end_fault(self, f: Fault) -> None:
        node = self.nodes[f.target]
        note = ""
        if f.kind in ("kill", "restart"):
            self._restart(node, f)
        elif f.kind == "wal_bitflip":
            flip = self._bitflips.pop(f.id, None)
            if flip is not None:
                _xor_byte(*flip)  # undone: the WAL is as the primary left it
                note = f": flip at offset {flip[1]} undone"
            if not node.proc.running:
                self._restart(node, f)
        elif f.kind == "retention":
            note = ": " + self._wait_out_of_retention(f.target)
            self._restart(node, f)
        elif f.kind == "freeze":
            os.kill(node.proc.pid, signal.SIGCONT)
            with self._lock:
                node.state = "up"
        elif f.kind in ("corrupt", "corrupt_any"):
            proxy = self.proxies[f.target]
            done = proxy.corrupted - self._corrupt_base.pop(f.id, proxy.corrupted)
            note = f": {done} chunks corrupted"
            proxy.resume()
        elif f.kind in ("cut", "stall", "delay"):
            self.proxies[f.target].resume()
        elif f.kind in _ATTACKS:
            note = self._end_attack(f)
        elif f.kind == "disk_error":
            control = node.proc.data_dir / chaos_plugins.DISK_ERROR_FILE
            consumed = not control.exists()
            control.unlink(missing_ok=True)
            note = ": injected" if consumed else ": no apply came (withdrawn)"
            if f.target == "primary":
                # a primary whose store failed refuses writes until it is restarted (killed:
                # a clean shutdown is the `restart` fault's business)
                with self._lock:
                    node.state = "down"
                node.proc.kill()
                self._restart(node, f)
        self.event(f.id, "end", f"{f.kind} {f.target} healed{note}")

    def _start_attack(self, f: Fault) -> None:
        address = self._primary_address
        stop = threading.Event()
        result: list[chaos_attacks.AttackResult] = []

        def run() -> None:
            try:
                if f.kind == "slot_flood":
                    res = chaos_attacks.slot_flood(address, f.id, int(f.param), stop)
                elif f.kind == "rogue_replica":
                    res = chaos_attacks.rogue_replica(address, f.id, REPLICAS, stop)
                elif f.kind == "stalled_snapshot":
                    res = chaos_attacks.stalled_snapshot(address, f.id, int(f.param),
                                                         _SNAPSHOT_HOLD_S, stop)
                else:
                    res = chaos_attacks.unread_writestream(address, stop,
                                                           _UNREAD_WRITES_BOUND)
            except grpc.RpcError as exc:  # the primary was down or went away meanwhile
                res = chaos_attacks.AttackResult(notes=[f"cut short: {exc.code()}"])
            result.append(res)

        thread = threading.Thread(target=run, name=f"chaos-{f.kind}", daemon=True)
        thread.start()
        self._attacks[f.id] = (thread, stop, result)

    def _end_attack(self, f: Fault) -> str:
        thread, stop, result = self._attacks.pop(f.id)
        stop.set()
        thread.join(60)
        if thread.is_alive() or not result:
            self.checker.violate("crash", f"fault #{f.id} ({f.describe()}): the attack did "
                                 "not end within 60s")
            return ""
        for problem in result[0].violations:
            self.checker.violate("bounds", f"fault #{f.id}: {problem}")
        return ": " + "; ".join(result[0].notes)

    def _flip_wal_bit(self, node: _Node, f: Fault) -> None:
        """Flip one bit of a record in the stopped primary's active segment and start it:
        a start that succeeds, or a refusal that changed the segment, is a violation."""
        segment = sorted((node.proc.data_dir / "wal").glob("*.wal"))[-1]
        size = segment.stat().st_size
        if size <= _WAL_SEGMENT_HEADER:
            self.event(f.id, "note", f"{segment.name} holds no record yet: nothing flipped")
            return
        rng = random.Random(f.seed)
        offset = rng.randrange(_WAL_SEGMENT_HEADER, size)
        mask = 1 << rng.randrange(8)
        _xor_byte(segment, offset, mask)
        damaged = segment.read_bytes()
        self._bitflips[f.id] = (segment, offset, mask)
        try:
            node.proc.start(_START_TIMEOUT_S)
        except KevoReplError:
            refusal = node.proc.stderr_file.read_text()[-2000:]
            self.event(f.id, "note", f"flipped bit {mask:#04x} at {segment.name} offset "
                       f"{offset}: the primary refused to start")
            if str(segment) not in refusal or "last good sequence" not in refusal:
                self.checker.violate("wal", f"fault #{f.id}: the primary's refusal does not "
                                     f"name {segment} and its last good sequence:\n{refusal}")
            if segment.read_bytes() != damaged:
                self._bitflips.pop(f.id)  # cut or rewritten: flipping back would not undo it
                self.checker.violate("durability", f"fault #{f.id}: the refused start changed "
                                     f"{segment} (a bit flipped at offset {offset})")
            return
        # It served on a damaged WAL: what it cut cannot be undone by flipping the bit back.
        self._bitflips.pop(f.id)
        with self._lock:
            self.pids.append((node.proc.pid, process_start_ticks(node.proc.pid)))
            node.state = "up"
        self.checker.violate("durability", f"fault #{f.id}: the primary started on a WAL with "
                             f"a bit flipped at {segment} offset {offset}")

    def _wait_out_of_retention(self, replica: str, timeout: float = 20.0) -> str:
        """Keep `replica` down (bounded) until the primary no longer retains its position.

        Only while the primary takes writes: this wait holds up the schedule, so a primary
        that another fault killed, froze or broke would only come back after it."""
        deadline = time.monotonic() + timeout
        position = self.checker.max_position.get(f"{replica} last_applied", 0)
        primary = self.nodes["primary"]
        while True:
            with self._lock:
                state = primary.state
            if state != "up":
                return f"not waited for: the primary is {state} (position {position})"
            try:
                st = primary.proc.status()
            except Exception:
                st = {}
            first = st.get("first_sequence", 0)
            if first > position + 1:
                return f"fell out of retention (position {position}, first retained {first})"
            if st and st.get("state") != "SERVING":
                return (f"not waited for: the primary refuses writes (position {position}, "
                        f"first retained {first})")
            if time.monotonic() > deadline:
                return (f"still retained after {timeout:g}s more (position {position}, "
                        f"first retained {first})")
            time.sleep(0.2)

    def _restart(self, node: _Node, f: Fault) -> None:
        recent = self.writes.recent(20) if node.name == "primary" else []
        self._start_node(node)
        node.restarts += 1
        if recent:
            self._check_recent_writes(recent, f)

    def _check_recent_writes(self, recent: list[ReturnedWrite], f: Fault) -> None:
        """The latest writes returned before the primary went down are there after it
        restarted (the end of the run checks every write)."""
        missing = []
        with Client(self._primary_address, timeout=_CALL_TIMEOUT_S) as c:
            for w in recent:
                for n in (w.n0, w.n0 + w.count - 1):
                    k = key_of(w.writer, n)
                    if c.get(k) != value_of(k):
                        missing.append(f"{k.decode()} of the {w.describe()}")
        if missing:
            self.checker.violate("durability", f"after the primary restarted (fault #{f.id}) "
                                 f"{len(missing)} keys of returned writes are missing: "
                                 + "; ".join(missing[:3]))

    # -- the end of the run --------------------------------------------------------------------

    def heal(self) -> None:
        """Undo every fault still active and bring back every node that is down."""
        for proxy in self.proxies.values():
            proxy.resume()
        for node in self.nodes.values():
            (node.proc.data_dir / chaos_plugins.DISK_ERROR_FILE).unlink(missing_ok=True)
            with self._lock:
                state = node.state
            if state == "frozen" and node.proc.running:
                os.kill(node.proc.pid, signal.SIGCONT)
                with self._lock:
                    node.state = "up"
            if not node.proc.running:
                self._start_node(node)
                node.restarts += 1
                self.event(-1, "heal", f"restarted {node.name}")
        self.event(-1, "heal", "every fault healed")

    def stop_writers(self) -> None:
        self._stop_writers.set()
        for t in self._threads:
            if t.name.startswith("chaos-writer"):
                t.join(_JOIN_TIMEOUT_S)

    def converge(self) -> None:
        """Every replica reaches the primary's digest within the bound."""
        started = time.monotonic()
        deadline = started + self.opts.converge_timeout
        primary = self.nodes["primary"].proc
        pending = list(REPLICAS)
        want: dict[str, Any] | None = None
        last: dict[str, str] = {}
        while pending and time.monotonic() < deadline:
            try:
                head = primary.status()["head_sequence"]
                if want is None or want["sequence"] != head:
                    want = primary.digest()
            except Exception as exc:
                last["primary"] = f"primary unreachable: {exc}"
                time.sleep(0.2)
                continue
            for name in list(pending):
                proc = self.nodes[name].proc
                try:
                    st = proc.status()
                    last[name] = (f"last_applied {st['last_applied']} of {head}, state "
                                  f"{st['state']}, last error {st['last_error']!r}")
                    if st["last_applied"] < head:
                        continue
                    got = proc.digest()
                except Exception as exc:
                    last[name] = f"unreachable: {exc}"
                    continue
                if got == want:
                    self.convergence[name] = round(time.monotonic() - started, 3)
                    pending.remove(name)
                elif got["sequence"] == want["sequence"]:
                    self.convergence[name] = None
                    pending.remove(name)
                    self.checker.violate("convergence", f"{name} differs from the primary at "
                                         f"sequence {got['sequence']}: {got['keys']} keys, "
                                         f"digest {got['digest'][:16]}; the primary has "
                                         f"{want['keys']} keys, digest {want['digest'][:16]}")
            if pending:
                time.sleep(0.2)
        for name in pending:
            self.convergence[name] = None
            tail = "\n".join(
                "      " + line[:200]
                for line in self.nodes[name].proc.log_tail(6).splitlines()
            )
            self.checker.violate("convergence", f"{name} did not reach the primary's digest "
                                 f"within {self.opts.converge_timeout:g}s: "
                                 f"{last.get(name, 'no status')}; its log ends:\n{tail}")
        self.event(-1, "check", "convergence: " + ", ".join(
            f"{n} {'-' if s is None else f'{s:.2f}s'}" for n, s in self.convergence.items()
        ))

    def check_counters(self) -> None:
        """Each store's own applied_entries, committed with its data, equals its position."""
        for node in self.nodes.values():
            try:
                st = node.proc.status()
            except Exception as exc:
                self.checker.violate("convergence", f"{node.name} has no status: {exc}")
                continue
            if st["applied_entries"] != st["last_applied"]:
                self.checker.violate("at-most-once", f"{node.name} counts "
                                     f"{st['applied_entries']} applied entries at position "
                                     f"{st['last_applied']}")

    def stop_cluster(self) -> None:
        """SIGTERM every node, replicas first; each must exit cleanly by itself."""
        for node in sorted(self.nodes.values(), key=lambda n: n.name == "primary"):
            with self._lock:
                frozen = node.state == "frozen"
                node.state = "down"
            if frozen and node.proc.running:
                os.kill(node.proc.pid, signal.SIGCONT)
            if not node.proc.running:
                node.proc.kill()  # reaps it: it died earlier (and that was reported)
                continue
            try:
                code = node.proc.terminate()
            except Exception as exc:
                log.warning("stopping %s: %s", node.name, exc)
                node.proc.kill()
                continue
            if code not in (0, None):
                self.event(-1, "stop", f"{node.name} exited with code {code} on SIGTERM")
                how = ("did not stop within 15s of SIGTERM and was killed" if code == -9
                       else f"exited with code {code} on SIGTERM")
                self.checker.violate("crash", f"{node.name} {how}:\n{node.proc.log_tail(8)}")
        for proxy in self.proxies.values():
            proxy.close()

    def check_leaks(self) -> None:
        for pid, started in self.pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
            if started is not None and process_start_ticks(pid) != started:
                continue  # the PID was recycled: ours is gone
            self.checker.violate("leak", f"process {pid} is still running after the run")
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for t in self._threads:
            if t.is_alive():
                self.checker.violate("leak", f"thread {t.name} did not stop")
        for name, proxy in self.proxies.items():
            if proxy.alive:
                self.checker.violate("leak", f"the fault proxy of {name} did not stop")

    @staticmethod
    def _registry() -> Registry:
        """The appliers the nodes use (chaos plugins included), to read their stores."""
        pm = get_plugin_manager()
        if not pm.has_plugin(_PLUGIN_MODULE):
            pm.register(chaos_plugins, name=_PLUGIN_MODULE)
        return Registry(pm)

    def check_stores(self) -> None:
        """Read every stopped node's store: returned writes present, values right."""
        writes = self.writes.snapshot()
        for name, node in self.nodes.items():
            try:
                store = open_registered(
                    self.registry, node.proc.applier or "lmdb", node.proc.data_dir / "store", {},
                    False,
                )
            except Exception as exc:
                self.checker.violate("durability", f"cannot open {name}'s store: {exc}")
                continue
            try:
                self.stores[name] = self.checker.check_store(
                    name, store, writes, self.writes.next_n, all_returned=name == "primary"
                )
            finally:
                store.close()

    # -- the whole run -------------------------------------------------------------------------

    def run(self) -> ChaosReport:
        (self.run_dir / "schedule.json").write_text(dump_schedule(self.schedule))
        try:
            self.start_cluster()
            # the schedule's clock starts once the cluster serves
            self.t0 = self.checker.t0 = time.monotonic()
            self.event(-1, "ready", "primary " + self._primary_address + ", " + ", ".join(
                f"{n} {self.nodes[n].proc.address} via proxy {self.proxies[n].address}"
                for n in REPLICAS
            ))
            for i in range(self.opts.writers):
                t = threading.Thread(target=self._writer, args=(i,), name=f"chaos-writer-{i}",
                                     daemon=True)
                self._threads.append(t)
                t.start()
            sampler = threading.Thread(target=self._sampler, name="chaos-sampler", daemon=True)
            self._threads.append(sampler)
            sampler.start()
            self.execute_schedule()
            self.heal()
            self.stop_writers()
            self.converge()
            self.check_counters()
        except Exception as exc:
            log.exception("chaos run failed")
            self.checker.violate("crash", f"the run itself failed: {exc}")
        finally:
            self._stop_writers.set()
            self._stop_sampler.set()
            for t in self._threads:
                t.join(_JOIN_TIMEOUT_S)
            self.stop_cluster()
        self.check_leaks()
        self.batches = self.checker.check_apply_log(self.run_dir / "apply.log")
        writes = self.writes.snapshot()
        self.checker.check_sequences_unique(writes)
        if self.nodes:
            try:
                self.check_stores()
            except Exception as exc:
                log.exception("chaos: reading the stores failed")
                self.checker.violate("durability", f"reading the stores failed: {exc}")
        return self.report(writes)

    def report(self, writes: Sequence[ReturnedWrite]) -> ChaosReport:
        opts = self.opts
        rep = ChaosReport(
            seed=opts.seed,
            duration_s=opts.duration,
            kinds=list(opts.kinds),
            targets=list(opts.targets) if opts.targets is not None else None,
            appliers={name: n.proc.applier or "lmdb" for name, n in self.nodes.items()},
            run_dir=str(self.run_dir),
            schedule=self.schedule,
            timeline=list(self.timeline),
            faults_per_kind=dict(sorted(self.executed.items())),
            writes_returned=len(writes),
            entries_returned=sum(w.count for w in writes),
            writes_failed=self.writes.failed,
            semisync=dict(sorted(self.semisync.items())),
            bootstraps={r: sum(v for (n, _), v in self._bootstraps.items() if n == r)
                        for r in REPLICAS},
            last_sequence=max((w.last for w in writes), default=0),
            restarts={name: n.restarts for name, n in self.nodes.items()},
            corrupted_chunks=sum(p.corrupted for p in self.proxies.values()),
            convergence_s=dict(self.convergence),
            peak_rss_mb={k: round(v, 1) for k, v in sorted(self.checker.peak_rss_mb.items())},
            batches_applied=self.batches,
            stores=self.stores,
            processes_started=len(self.pids),
            elapsed_s=round(time.monotonic() - self.started, 2),
            violations=list(self.checker.violations),
        )
        return rep


def _xor_byte(path: Path, offset: int, mask: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def run_chaos(opts: ChaosOptions) -> ChaosReport:
    """Run one chaos pass; the report's `violations` is empty when every check held.

    The run directory (node data and logs, `schedule.json`, `report.json`, `apply.log`) is
    kept when a violation was found, when `opts.dir` was given, or with `opts.keep`.
    """
    run = ChaosRun(opts)
    report = run.run()
    (run.run_dir / "report.json").write_text(json.dumps(report.as_dict(), indent=1))
    if report.ok and run._temp and not opts.keep:
        shutil.rmtree(run.run_dir, ignore_errors=True)
        report.run_dir_kept = False
    return report
