"""`kevo-repl ha`: one node of a cluster that fails over automatically through etcd.

The agent runs the node (kevo_repl.ha.child) and decides its role from etcd
(kevo_repl.ha.coordination):
- The primary holds the `leader` key on a lease of `[ha] ttl_s` seconds and renews it every
  quarter of that. If a renewal has not succeeded within FENCE_FRACTION of the TTL since the
  last successful one was sent, the agent SIGKILLs its node: the old primary has stopped
  taking writes before etcd can expire the lease and let another node take over.
- Every node publishes its durable position and epoch under `members/NAME` (on its own lease).
- When the leader key is gone, every node reports its final position for the election
  (`ready_for`), and once every live member has (never without one), the most advanced node on
  the cluster's newest epoch (highest position, then name) creates the leader key in a
  transaction that requires it absent and the cluster epoch unchanged, with epoch + 1. It is
  promoted (kevo_repl.ha.promote) and restarts its node as primary; its epoch, the fencing
  token, goes into its WAL's epoch history.
- Never on a history older than the newest epoch that served, while a node that may hold that
  epoch's writes is missing; but an epoch only its own primary ever held (no replica recorded
  holding it in etcd, `holders/`) can hold no semi-sync-acknowledged write, so once that
  primary is gone the reporting nodes are elected from their own newest epoch rather than
  waiting for it to come back.
- The others restart their node as replicas of the new primary. An old primary, and a
  replica refused as forked, rejoin first (kevo_repl.ha.rejoin): what they held past the
  fork point is counted (`discarded_entries`, in the log, in etcd and in
  DATA_DIR/discarded-epoch-N/discarded.json) and set aside, never deleted.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import time
from typing import Any

from kevo_repl.client.client import Client
from kevo_repl.config import Config, parse_address
from kevo_repl.errors import KevoReplError
from kevo_repl.ha.child import Child
from kevo_repl.ha.coordination import Coordinator, Leader, Member
from kevo_repl.ha.disk_position import durable_position
from kevo_repl.ha.election import oldest_electable
from kevo_repl.ha.node_dir import read_role
from kevo_repl.ha.promote import new_term, promote
from kevo_repl.ha.rejoin import rejoin
from kevo_repl.plugin.manager import Registry
from kevo_repl.storage import epochs as epochs_mod

log = logging.getLogger(__name__)

#: the node is killed once this much of the TTL passed without a successful renewal
FENCE_FRACTION = 0.6
#: how often the agent looks at etcd and at its node
TICK_S = 0.1
#: an election waits this many TTLs for every live member's report, then starts over
ELECTION_WAIT_TTLS = 5


class Agent:
    def __init__(self, cfg: Config, registry: Registry, *, config_path: str | None,
                 log_level: str = "INFO") -> None:
        if not cfg.ha.etcd or not cfg.ha.name:
            raise KevoReplError("kevo-repl ha needs [ha] etcd and [ha] name")
        cfg.validate()
        self.cfg = cfg
        self.registry = registry
        self.name = cfg.ha.name
        self.ttl = cfg.ha.ttl_s
        self.config_path = config_path
        self.log_level = log_level
        self.coord = Coordinator(cfg.ha.etcd, cfg.ha.cluster)
        self.address = _fixed_address(cfg.node.listen)
        self.child: Child | None = None
        self.member_lease: Any = None
        self.leader_lease: Any = None
        #: monotonic time the last successful leader-lease renewal was sent
        self.renewed_at = 0.0
        self.position = 0
        self.ready_for = 0
        self.discarded_entries = 0
        self.failovers = 0
        #: the newest epoch this node was recorded in etcd as holding (`holders/`)
        self.held_epoch = 0
        self._stop = asyncio.Event()

    # -- the node's directory ------------------------------------------------------------

    def _role_on_disk(self) -> str | None:
        try:
            return read_role(self.cfg.data_dir)["role"]
        except KevoReplError:
            return None  # a fresh directory

    def _epoch_on_disk(self) -> int:
        role = self._role_on_disk()
        where = self.cfg.data_dir / "wal" if role == "primary" else self.cfg.data_dir
        return epochs_mod.load(where)[-1].number

    async def _node_status(self) -> dict[str, Any] | None:
        if self.child is None or not self.child.running:
            return None

        def ask() -> dict[str, Any]:
            with Client(self.address, timeout=1.0, connector=self.cfg.connector) as c:
                return c.status()

        try:
            return await asyncio.to_thread(ask)
        except Exception:  # the node may be starting or gone; the next tick asks again
            return None

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        self.member_lease = await self._retry(lambda: self.coord.grant(self.ttl))
        tasks = [
            asyncio.create_task(self._keep_member(), name="member"),
            asyncio.create_task(self._keep_leadership(), name="leadership"),
        ]
        try:
            while not self._stop.is_set():
                try:
                    await self._step()
                except KevoReplError as exc:
                    log.error("%s", exc)
                    await asyncio.sleep(self.ttl / 2)
                except Exception as exc:  # etcd unreachable, a node that is restarting
                    log.warning("ha step failed: %s: %s", type(exc).__name__, exc)
                    await asyncio.sleep(TICK_S * 5)
                await asyncio.sleep(TICK_S)
        finally:
            for task in tasks:
                task.cancel()
            if self.child is not None:
                await self.child.stop()
            await self.coord.close()

    def stop(self) -> None:
        self._stop.set()

    async def _retry(self, make: Any) -> Any:
        while True:
            try:
                return await make()
            except Exception as exc:
                log.warning("etcd %s: %s; retrying", self.cfg.ha.etcd, exc)
                await asyncio.sleep(1.0)

    async def _step(self) -> None:
        found = await self.coord.leader()
        if found is None:
            await self._elect()
            return
        leader, _revision = found
        if leader.name == self.name:
            if self.leader_lease is None:
                # our own key from before a restart or a fence: wait for it to expire
                await self._fence("the leader key is ours but its lease is not held")
                return
            await self._serve_as_primary()
            return
        await self._follow(leader)

    # -- leadership ------------------------------------------------------------------------

    async def _keep_leadership(self) -> None:
        """Renew the leader lease; fence (SIGKILL the node) before it can expire."""
        while True:
            await asyncio.sleep(min(self.ttl / 4, TICK_S * 2))
            lease = self.leader_lease
            if lease is None:
                continue
            if time.monotonic() - self.renewed_at > self.ttl * FENCE_FRACTION:
                await self._fence(f"the leader lease was not renewed within "
                                  f"{self.ttl * FENCE_FRACTION:.1f}s")
                continue
            if time.monotonic() - self.renewed_at < self.ttl / 4:
                continue
            sent = time.monotonic()
            try:
                ok = await asyncio.wait_for(self.coord.refresh(lease), self.ttl / 4)
            except Exception as exc:
                log.warning("leader lease renewal failed: %s", exc)
                continue
            if not ok:
                await self._fence("the leader lease expired")
            elif self.leader_lease is lease:
                self.renewed_at = sent

    async def _fence(self, why: str) -> None:
        if self.leader_lease is not None or (
            self.child is not None and self.child.role == "primary" and self.child.running
        ):
            log.error("fenced: %s; the primary node is stopped (SIGKILL)", why)
        self.leader_lease = None
        if self.child is not None and self.child.role == "primary":
            await self.child.kill()
            self.child = None

    async def _serve_as_primary(self) -> None:
        if self.child is not None and self.child.role == "primary" and self.child.running:
            return
        await self._start("primary")

    async def _keep_member(self) -> None:
        while True:
            try:
                status = await self._node_status()
                if status is not None:
                    self.position = int(
                        status["head_sequence"] if status["role"] == "primary"
                        else status["last_applied"]
                    )
                if not await self.coord.refresh(self.member_lease):
                    self.member_lease = await self.coord.grant(self.ttl)
                await self._record_held_epoch()
                await self.coord.publish(self._member(), self.member_lease)
            except Exception as exc:
                log.debug("member update failed: %s", exc)
            await asyncio.sleep(TICK_S * 2)

    async def _record_held_epoch(self) -> None:
        """A replica whose node adopted a newer epoch (on disk before anything of it is
        applied or acknowledged) says so in etcd, where it outlives the node."""
        if self._role_on_disk() != "replica":
            return  # a primary records its epoch when it is elected
        epoch = self._epoch_on_disk()
        if epoch > self.held_epoch:
            await self.coord.hold(epoch, self.name, "replica")
            self.held_epoch = epoch

    def _member(self) -> Member:
        return Member(
            self.name, self.address, self.position, self._epoch_on_disk(),
            self._role_on_disk() or "new", self.ready_for, self.discarded_entries,
        )

    async def _elect(self) -> None:
        """No primary: report a final position, then the most advanced node takes over."""
        await self._fence("there is no leader key")  # only a leader's node may take writes
        epoch = await self.coord.cluster_epoch()
        await self._settle_position()
        self.ready_for = epoch + 1
        await self.coord.publish(self._member(), self.member_lease)
        loop = asyncio.get_running_loop()
        # every live member must report: the one missing may hold the newest acknowledged
        # writes. A dead member drops out when its lease expires (within a TTL).
        deadline = loop.time() + ELECTION_WAIT_TTLS * self.ttl
        while True:
            members = await self.coord.members()
            ready = [m for m in members if m.ready_for == epoch + 1]
            if members and len(ready) == len(members):
                break
            if await self.coord.leader() is not None:
                return
            if loop.time() >= deadline:
                log.warning("election of epoch %d: %d of %d members reported; trying again",
                            epoch + 1, len(ready), len(members))
                return
            await asyncio.sleep(TICK_S)
        # the newest history among those reporting; never one older than an epoch that
        # served (a node that took an epoch but died before recording it does not count)
        served = await self.coord.served_epoch()
        top = max((m.epoch for m in ready), default=0)
        floor = await self._oldest_electable(served, top)
        eligible = [m for m in ready if m.epoch == top and top >= floor]
        if not eligible:
            log.warning("no node is eligible for epoch %d yet (newest reported %d, served %d)",
                        epoch + 1, top, served)
            await asyncio.sleep(self.ttl / 2)
            return
        best = min(eligible, key=lambda m: (-m.position, m.name))
        if best.name != self.name:
            await self._wait_for_leader(2 * self.ttl)
            return
        mine_primary = self._role_on_disk() == "primary" and self._epoch_on_disk() == epoch
        new_epoch = epoch if mine_primary and epoch else epoch + 1
        sent = time.monotonic()
        lease = await self.coord.grant(self.ttl)
        if not await self.coord.acquire(Leader(self.name, self.address, new_epoch), lease):
            await self.coord.client.revoke_lease(lease.id)
            return
        self.renewed_at, self.leader_lease = sent, lease
        self.ready_for = 0
        self.failovers += 1
        log.warning("elected primary of epoch %d at position %d", new_epoch, best.position)
        await self._become_primary(new_epoch)

    async def _oldest_electable(self, served: int, top: int) -> int:
        if top >= served:
            return served
        floor = oldest_electable(served, top, await self.coord.holders())
        if floor < served:
            log.warning("epochs %d to %d were only ever on their primaries, none of them "
                        "reporting; no replica held them, so electing from epoch %d",
                        top + 1, served, top)
        return floor

    async def _settle_position(self) -> None:
        """Wait (bounded) until the node's durable position stops moving."""
        last = -1
        for _ in range(20):
            status = await self._node_status()
            if status is None and self.child is None:  # no node: its position on disk
                self.position = await asyncio.to_thread(
                    durable_position, copy.deepcopy(self.cfg), self.registry)
                return
            if status is None:
                return
            pos = int(status["last_applied"] if status["role"] == "replica"
                      else status["head_sequence"])
            self.position = pos
            if pos == last:
                return
            last = pos
            await asyncio.sleep(TICK_S * 2)

    async def _wait_for_leader(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if await self.coord.leader() is not None:
                return
            await asyncio.sleep(TICK_S)

    async def _become_primary(self, epoch: int) -> None:
        if self.child is not None:
            await self.child.stop()
            self.child = None
        if self._role_on_disk() == "replica":
            cfg = copy.deepcopy(self.cfg)
            result = await asyncio.to_thread(promote, cfg, self.registry, epoch=epoch)
            log.warning("promoted to epoch %d from position %d", result.epoch, result.position)
        elif self._role_on_disk() == "primary" and self._epoch_on_disk() < epoch:
            cfg = copy.deepcopy(self.cfg)
            start = await asyncio.to_thread(new_term, cfg, self.registry, epoch)
            log.warning("primary again, in epoch %d from sequence %d", epoch, start)
        await self.coord.hold(epoch, self.name, "primary")
        await self.coord.mark_served(epoch)  # on disk now: older histories are out
        await self._start("primary")

    # -- following -------------------------------------------------------------------------

    async def _follow(self, leader: Leader) -> None:
        self.ready_for = 0
        if self._role_on_disk() == "primary":
            await self._fence(f"{leader.name} is the primary of epoch {leader.epoch}")
            await self._rejoin(leader)
        child = self.child
        if child is not None and child.running and child.role == "replica" and (
            child.primary == leader.address
        ):
            status = await self._node_status()
            if status is not None and status["state"] == "ERROR" and (
                "fork" in status["last_error"]
            ):
                log.warning("the node forked from %s: %s", leader.name, status["last_error"])
                await child.stop()
                self.child = None
                await self._rejoin(leader)
                await self._start("replica", leader.address)
            return
        if child is not None:
            await child.stop()
            self.child = None
        await self._start("replica", leader.address)

    async def _rejoin(self, leader: Leader) -> None:
        cfg = copy.deepcopy(self.cfg)
        result = await asyncio.to_thread(rejoin, cfg, self.registry, leader.address)
        self.discarded_entries += result.discarded_entries
        log.warning(
            "rejoined as a replica of %s (epoch %d): fork point %d, %d entries discarded%s",
            leader.name, leader.epoch, result.fork_point, result.discarded_entries,
            f" (kept in {result.kept_in})" if result.kept_in else "",
        )

    async def _start(self, role: str, primary: str = "") -> None:
        self.child = await Child.start(
            role, data_dir=self.cfg.data_dir, listen=self.address,
            applier=self.cfg.applier.name, config=self.config_path, log_level=self.log_level,
            primary=primary, replica_id=self.name,
        )


def _fixed_address(listen: str) -> str:
    """The node's address must outlive restarts (it is published): port 0 picks one now."""
    host, port = parse_address(listen, "[node] listen")
    if port:
        return listen
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return f"{host}:{s.getsockname()[1]}"
