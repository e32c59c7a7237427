"""Which history an election may pick from, given what etcd records."""

from __future__ import annotations


def oldest_electable(served: int, top: int, holders: dict[int, dict[str, str]]) -> int:
    """The oldest epoch a node may be elected on.

    `served` is the newest epoch whose primary held it on disk before serving, `top` the
    newest epoch any reporting node holds, `holders` etcd's `holders/` record (epoch ->
    {name: "primary" | "replica"}). Normally `served`: a node of an older history might lack
    that epoch's writes. But an epoch no replica ever held can have no semi-sync-acknowledged
    write (a replica adopts an epoch before it acknowledges anything of it), so when every
    epoch after `top` was only ever on its own primary, none of which is reporting, `top` is
    electable rather than waiting for those primaries to come back. Without a record of the
    served epoch's primary (one that served before holders were recorded), `served`.
    """
    if top >= served:
        return served
    if "primary" not in holders.get(served, {}).values():
        return served
    if any("replica" in names.values() for e, names in holders.items() if top < e <= served):
        return served
    return top
