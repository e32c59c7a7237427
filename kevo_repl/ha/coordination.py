"""The cluster's state in etcd, through aetcd (an asyncio etcd v3 client).

Keys under /kevo-repl/CLUSTER/:
- `leader`: `{"name", "address", "epoch"}` of the primary, attached to the primary's lease:
  it disappears when the primary stops renewing it, and only one node can create it
  (a transaction that requires it absent). Its creation revision is the fencing token.
- `epoch`: the newest epoch any primary of the cluster took (never goes back).
- `served`: the newest epoch a primary recorded on disk before serving: a node of an older
  epoch is never elected while it might lack that epoch's writes.
- `members/NAME`: what each node reports (address, durable position, epoch, role), attached
  to the node's own lease, so a dead node drops out of elections.
- `holders/EPOCH/NAME`: "primary" or "replica", on no lease (evidence outlives the node): the
  primary of EPOCH wrote it before serving; a replica's agent writes it once its node's
  history on disk reaches EPOCH (the node adopts an epoch before it applies or acknowledges
  anything of it). An epoch no replica ever held can have no semi-sync-acknowledged write.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import aetcd

#: every etcd call is bounded: an unreachable etcd must not hold up fencing
CALL_TIMEOUT_S = 1


@dataclass(frozen=True)
class Leader:
    name: str
    address: str
    epoch: int


@dataclass(frozen=True)
class Member:
    name: str
    address: str
    #: durable position (a replica's last_applied, a primary's head)
    position: int
    #: the newest epoch of this node's history
    epoch: int
    role: str
    #: the leaderless epoch this node has seen end, with its position final for it; 0 = none
    ready_for: int = 0
    #: entries it set aside when it last rejoined (never replicated to the new history)
    discarded_entries: int = 0


def prefix(cluster: str) -> bytes:
    return f"/kevo-repl/{cluster}/".encode()


class Coordinator:
    """One node's view of the cluster in etcd."""

    def __init__(self, etcd: str, cluster: str) -> None:
        host, _, port = etcd.rpartition(":")
        self.client = aetcd.Client(host=host, port=int(port), timeout=CALL_TIMEOUT_S)
        self.root = prefix(cluster)

    async def close(self) -> None:
        await self.client.close()

    async def grant(self, ttl_s: int) -> Any:
        return await self.client.lease(ttl_s)

    async def refresh(self, lease: Any) -> bool:
        """Renew a lease; False when it has expired."""
        reply = await self.client.refresh_lease(lease.id)
        return reply is not None and int(reply.TTL) > 0

    async def leader(self) -> tuple[Leader, int] | None:
        """The primary and the revision its key was created at (the fencing token)."""
        got = await self.client.get(self.root + b"leader")
        if got is None:
            return None
        return Leader(**json.loads(got.value)), int(got.create_revision)

    async def cluster_epoch(self) -> int:
        got = await self.client.get(self.root + b"epoch")
        return int(got.value) if got is not None else 0

    async def served_epoch(self) -> int:
        """The newest epoch whose primary got as far as holding it on disk."""
        got = await self.client.get(self.root + b"served")
        return int(got.value) if got is not None else 0

    async def mark_served(self, epoch: int) -> None:
        await self.client.put(self.root + b"served", str(epoch).encode())

    async def acquire(self, me: Leader, lease: Any) -> bool:
        """Become the primary of `me.epoch`, if nobody is and no newer epoch was taken."""
        tx = self.client.transactions
        key, epoch_key = self.root + b"leader", self.root + b"epoch"
        current = await self.cluster_epoch()
        if me.epoch < current:
            return False
        compare = [tx.create(key) == 0]
        if current:
            compare.append(tx.value(epoch_key) == str(current).encode())
        else:
            compare.append(tx.create(epoch_key) == 0)
        ok, _ = await self.client.transaction(
            compare=compare,
            success=[
                tx.put(key, json.dumps(asdict(me)).encode(), lease=lease),
                tx.put(epoch_key, str(me.epoch).encode()),
            ],
            failure=[],
        )
        return bool(ok)

    async def hold(self, epoch: int, name: str, role: str) -> None:
        """Record that `name` holds (or, as its primary, is about to write) `epoch`."""
        await self.client.put(self.root + b"holders/%d/" % epoch + name.encode(),
                              role.encode())

    async def holders(self) -> dict[int, dict[str, str]]:
        """epoch -> {name: "primary" | "replica"} of every node that held that epoch."""
        base = self.root + b"holders/"
        out: dict[int, dict[str, str]] = {}
        for got in await self.client.get_prefix(base):
            epoch, _, name = got.key[len(base):].decode().partition("/")
            out.setdefault(int(epoch), {})[name] = got.value.decode()
        return out

    async def publish(self, member: Member, lease: Any) -> None:
        await self.client.put(
            self.root + b"members/" + member.name.encode(),
            json.dumps(asdict(member)).encode(),
            lease=lease,
        )

    async def members(self) -> list[Member]:
        found = await self.client.get_prefix(self.root + b"members/")
        return [Member(**json.loads(got.value)) for got in found]
