"""`kevo-repl status` and `slots list` as an operator reads them: each role's own fields,
readable numbers, and nothing that is only a placeholder."""

from __future__ import annotations

from typing import Any

#: fields only a replica fills in (a primary's status leaves them out)
REPLICA_ONLY = frozenset({
    "primary", "replica_id", "reconnects", "corrupt_entries", "gaps", "duplicates_skipped",
    "lag_entries", "lag_seconds", "stalled", "connected", "last_message_age_s",
    "backoff_history_s", "received_sequence", "apply_rate", "bootstraps",
    "primary_protocol", "primary_lacks", "mislabelled_payloads", "divergence_detection",
    "store_damage_events",
    "last_verified_sequence", "last_verified_age_s", "divergent_ranges",
    "divergent_range_count", "verify_runs", "verify_failures", "verify_error",
}) | frozenset(f"bootstrap_{k}" for k in (
    "state", "snapshot_id", "sequence", "chunks", "keys", "bytes", "total_keys", "total_bytes",
    "percent",
))
#: fields only a primary fills in
PRIMARY_ONLY = frozenset({
    "first_sequence", "replicas", "semisync_degraded", "wal_bytes", "wal_segments",
    "max_retained_bytes", "oldest_segment_held_by", "oldest_segment_age_s", "snapshots_held",
    "lost_slots",
})
#: bootstrap progress: shown while one runs or after one failed, not forever after
_BOOTSTRAP_PROGRESS = frozenset(k for k in REPLICA_ONLY if k.startswith("bootstrap_")) - {
    "bootstrap_state"
}


def for_role(st: dict[str, Any]) -> dict[str, Any]:
    """The status without the other role's fields and without placeholders."""
    other = PRIMARY_ONLY if st.get("role") == "replica" else REPLICA_ONLY
    out = {k: v for k, v in st.items() if k not in other}
    if "replicas" in out:
        out["replicas"] = [_slot_fields(r) for r in out["replicas"]]
    if "backoff_history_s" in out:  # milliseconds are precision enough
        out["backoff_history_s"] = [round(d, 3) for d in out["backoff_history_s"]]
    return out


def _slot_fields(slot: dict[str, Any]) -> dict[str, Any]:
    out = dict(slot)
    if out.get("lost_age_s", -1.0) < 0:
        out.pop("lost_age_s", None)  # -1: not lost
    if out.get("last_ack_age_s", -1.0) < 0:
        out["last_ack_age_s"] = None  # no ack yet
    return out


def human_bytes(n: int) -> str:
    """68719476736 -> '64.0 GiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _show(key: str, value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return "[" + ", ".join(str(_show(key, v)) for v in value) + "]"
    if isinstance(value, int) and key.endswith("_bytes"):
        return human_bytes(value)
    return value


def status_rows(st: dict[str, Any]) -> list[tuple[str, Any]]:
    """The rows of the status table (slots are printed apart)."""
    st = for_role(st)
    st.pop("replicas", None)
    always = {"role", "state", "last_applied", "head_sequence", "applied_entries"}
    if st.get("role") == "replica":
        always |= {"lag_entries", "lag_seconds", "stalled", "connected", "received_sequence"}
        if st.get("bootstrap_state") not in ("RECEIVING", "FAILED"):
            for k in _BOOTSTRAP_PROGRESS:
                st.pop(k, None)
    rows = []
    for k, v in st.items():
        if k not in always and v in ("", None, 0, 0.0, False, []):
            continue  # counters at zero and empty fields: --json has everything
        shown = _show(k, v)
        if k == "lag_entries" and st.get("role") == "replica" and not st.get("connected"):
            age = st.get("last_message_age_s", -1.0)
            heard = f"{age:.1f}s ago" if age >= 0 else "never"
            shown = f"unknown: not connected (>= {v} when last heard, {heard})"
        rows.append((k, shown))
    return rows


def print_table(rows: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def print_slots(replicas: list[dict[str, Any]]) -> None:
    # the column appears only when a slot is why the oldest WAL segment is still kept
    oldest = any(r["holds_oldest_segment"] for r in replicas)
    print(f"{'replica':<16} {'state':<8} {'acked':>12} {'lag':>10} {'lag bytes':>11}  "
          + (f"{'holds oldest':<12}  " if oldest else "") + "peer")
    for r in replicas:
        # a KevoDB replica never acknowledges: its slot follows its stream requests
        acked = "never acks" if r.get("never_acks") else r["acked_sequence"]
        print(
            f"{r['replica_id']:<16} {r['slot_state']:<8} {acked:>12} "
            f"{r['lag_entries']:>10} {human_bytes(r['lag_bytes']):>11}  "
            + (f"{'yes' if r['holds_oldest_segment'] else '':<12}  " if oldest else "")
            + (r["peer"] or "-")
        )
