"""Prometheus metrics, read from a node's status at scrape time (nothing on the hot path).

Names follow Prometheus conventions: the `kevo_repl_` prefix, base units in the name
(`_seconds`, `_bytes`), `_total` for counters, labels for per-replica series.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kevo_repl.config import metrics_address, parse_address
from kevo_repl.errors import KevoReplError
from kevo_repl.node import metrics_http
from kevo_repl.replica.state import State

log = logging.getLogger(__name__)

_REPLICA_GAUGES = {
    "lag_entries": ("kevo_repl_replica_lag_entries", "Entries the replica is behind its primary"),
    "lag_seconds": ("kevo_repl_replica_lag_seconds",
                    "How long the replica has been behind, on the primary's clock"),
    "received_sequence": ("kevo_repl_replica_received_sequence",
                          "Last sequence received (verified, maybe not yet durable)"),
    "apply_rate": ("kevo_repl_replica_apply_rate_entries_per_second",
                   "Recent apply rate of the replica"),
    "primary_protocol": ("kevo_repl_replica_primary_protocol",
                         "Protocol version the primary speaks (1 KevoDB, 2 kevo-repl, 0 unknown)"),
    "divergence_detection": ("kevo_repl_replica_divergence_detection",
                             "1 while the primary sends a hash chain that is checked, else 0"),
}
_REPLICA_COUNTERS = {
    "reconnects": ("kevo_repl_replica_reconnects", "Reconnects to the primary"),
    "corrupt_entries": ("kevo_repl_replica_corrupt_entries",
                        "Entries that arrived corrupt and were re-requested"),
    "gaps": ("kevo_repl_replica_gaps", "Sequence gaps seen in the stream"),
    "duplicates_skipped": ("kevo_repl_replica_duplicates_skipped",
                           "Entries skipped because they were already applied"),
    "mislabelled_payloads": ("kevo_repl_replica_mislabelled_payloads",
                             "Payloads flagged compressed that arrived plain (KevoDB primary)"),
    "bootstraps": ("kevo_repl_replica_bootstraps", "Snapshots installed since the node started"),
    "store_damage_events": ("kevo_repl_replica_store_damage_events",
                            "Times the store was found damaged since the node started"),
}
_PRIMARY_COUNTERS = {
    "semisync_degraded": ("kevo_repl_primary_semisync_degraded",
                          "Semi-sync writes that timed out and returned degraded"),
}
#: status fields exported under names of their own above (or as state labels)
_NAMED = {"last_applied", "head_sequence", "applied_entries", "first_sequence", "wal_bytes",
          "connected", "stalled"}


def metric_name(role: str, field: str) -> str:
    """The metric that exports a numeric status field (the test of completeness uses it)."""
    for table in (_REPLICA_GAUGES, _REPLICA_COUNTERS, _PRIMARY_COUNTERS):
        if field in table:
            name = table[field][0]
            return name + "_total" if table is not _REPLICA_GAUGES else name
    fixed = {"last_applied": "kevo_repl_last_applied_sequence",
             "head_sequence": "kevo_repl_head_sequence",
             "applied_entries": "kevo_repl_applied_entries_total",
             "first_sequence": "kevo_repl_primary_first_sequence",
             "wal_bytes": "kevo_repl_primary_wal_bytes",
             "connected": "kevo_repl_replica_connected",
             "stalled": "kevo_repl_replica_stalled"}
    return fixed.get(field) or f"kevo_repl_{role}_{field}"


#: per-slot fields on the primary: metric suffix and meaning
_SLOT_GAUGES = {
    "acked_sequence": ("acked_sequence", "Highest sequence a replica acked"),
    "lag_entries": ("lag_entries", "Entries a replica has not acked"),
    "connected": ("connected", "1 while the replica streams"),
    "stalled": ("stalled", "1 when connected, behind and not acking"),
    "lag_bytes": ("lag_bytes", "WAL bytes after the acked sequence (0 when lost)"),
    "holds_oldest_segment": ("holds_oldest_segment",
                             "1 when this slot is why the oldest WAL segment is kept"),
    "last_ack_age_s": ("last_ack_age_seconds", "Seconds since the last ack (-1: none yet)"),
    "inactive_s": ("inactive_seconds", "Seconds since the replica was last seen (0: active)"),
    "lost_age_s": ("lost_age_seconds", "Seconds since the slot was marked lost (-1: not lost)"),
    "never_acks": ("never_acks", "1 for a replica that never acknowledges (KevoDB)"),
    "sent_sequence": ("sent_sequence", "Highest sequence sent to the replica"),
}
SLOT_STATES = ("active", "inactive", "lost")


def slot_metric_name(field: str) -> str:
    if field == "slot_state":
        return "kevo_repl_primary_slot_state"
    return f"kevo_repl_primary_slot_{_SLOT_GAUGES[field][0]}"


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float)  # bool is an int: exported as 0/1


class StatusCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        try:
            st = self._status()
        except Exception:  # a scrape must not take the node down
            log.exception("status for metrics failed")
            return
        role = st.get("role", "")
        info = GaugeMetricFamily(
            "kevo_repl_node_info", "Node identity", labels=["role", "applier", "history_id"]
        )
        info.add_metric([role, st.get("applier", ""), st.get("history_id", "")], 1)
        yield info
        yield GaugeMetricFamily("kevo_repl_last_applied_sequence",
                                "Durable position of the local store",
                                value=st.get("last_applied", 0))
        yield GaugeMetricFamily("kevo_repl_head_sequence",
                                "The primary's last durable WAL sequence (as last heard)",
                                value=st.get("head_sequence", 0))
        yield CounterMetricFamily("kevo_repl_applied_entries",
                                  "Entries applied to the local store since it was created",
                                  value=st.get("applied_entries", 0))
        if "rss_bytes" in st:
            yield GaugeMetricFamily("kevo_repl_node_rss_bytes", "Resident set size of the node",
                                    value=st["rss_bytes"])
            yield GaugeMetricFamily("kevo_repl_node_max_rss_bytes",
                                    "[node] max_rss_mb in bytes; 0 = no bound",
                                    value=st.get("max_rss_bytes", 0))
            yield CounterMetricFamily("kevo_repl_node_memory_guard_trips",
                                      "Times the memory guard ended this node (over max_rss_mb)",
                                      value=st.get("memory_guard_trips", 0))
        yield GaugeMetricFamily("kevo_repl_discarded_entries",
                                "Entries this node set aside when it rejoined a newer primary "
                                "(never replicated there; kept in discarded-epoch-N/)",
                                value=st.get("discarded_entries", 0))
        if role == "replica":
            yield from self._replica(st)
        else:
            yield from self._primary(st)
        yield from self._the_rest(role, st)

    def _the_rest(self, role: str, st: dict[str, Any]) -> Iterator[Metric]:
        """Every other numeric status field, as a gauge named after it: what `status`
        shows, Prometheus has."""
        named = _NAMED | set(_REPLICA_GAUGES) | set(_REPLICA_COUNTERS) | set(_PRIMARY_COUNTERS)
        for key, value in st.items():
            if key in named or not _numeric(value):
                continue
            yield GaugeMetricFamily(metric_name(role, key), f"status field {key}",
                                    value=float(value))

    def _replica(self, st: dict[str, Any]) -> Iterator[Metric]:
        for key, (name, doc) in _REPLICA_GAUGES.items():
            if key in st:
                yield GaugeMetricFamily(name, doc, value=float(st[key]))
        for key, (name, doc) in _REPLICA_COUNTERS.items():
            if key in st:
                yield CounterMetricFamily(name, doc, value=st[key])
        for key, name, doc in (
            ("connected", "kevo_repl_replica_connected", "1 while streaming from the primary"),
            ("stalled", "kevo_repl_replica_stalled", "1 when connected but not advancing"),
        ):
            yield GaugeMetricFamily(name, doc, value=1.0 if st.get(key) else 0.0)
        state = GaugeMetricFamily("kevo_repl_replica_state", "1 for the current state",
                                  labels=["state"])
        for s in State:
            state.add_metric([s.value], 1.0 if st.get("state") == s.value else 0.0)
        yield state

    def _primary(self, st: dict[str, Any]) -> Iterator[Metric]:
        for key, (name, doc) in _PRIMARY_COUNTERS.items():
            if key in st:
                yield CounterMetricFamily(name, doc, value=st[key])
        yield GaugeMetricFamily("kevo_repl_primary_first_sequence",
                                "First sequence still retained in the WAL",
                                value=st.get("first_sequence", 0))
        if "wal_bytes" in st:
            yield GaugeMetricFamily("kevo_repl_primary_wal_bytes", "Bytes of WAL on disk",
                                    value=st["wal_bytes"])
        families = {
            key: GaugeMetricFamily(slot_metric_name(key), doc, labels=["replica_id"])
            for key, (_, doc) in _SLOT_GAUGES.items()
        }
        state = GaugeMetricFamily(slot_metric_name("slot_state"),
                                  "1 for the slot's state (active, inactive, lost)",
                                  labels=["replica_id", "state"])
        for slot in st.get("replicas", []):
            values: dict[str, Any] = (
                slot if isinstance(slot, dict)
                else {k: getattr(slot, k) for k in (*families, "slot_state", "replica_id")}
            )
            rid = str(values["replica_id"])
            for key, fam in families.items():
                fam.add_metric([rid], float(values[key]))
            for name in SLOT_STATES:
                state.add_metric([rid, name], 1.0 if values["slot_state"] == name else 0.0)
        yield from families.values()
        yield state


def serve_metrics(
    address: str, status: Callable[[], dict[str, Any]], token: str = "",
    tls_cert: str = "", tls_key: str = "",
) -> tuple[Any, str]:
    """Serve /metrics on `address` (HOST:PORT, or PORT for 127.0.0.1; port 0 picks one) in a
    background thread, behind `token` and over HTTPS when given. Returns the server handle
    and the bound address."""
    host, port = parse_address(metrics_address(address), "--metrics")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    try:
        server, thread = metrics_http.start(host, port, registry, token, tls_cert, tls_key)
    except OSError as exc:
        raise KevoReplError(f"cannot serve metrics on {address}: {exc.strerror}") from None
    bound = f"{host}:{server.server_port}"
    log.info("metrics on %s://%s/metrics%s", "https" if tls_cert else "http", bound,
             " (token required)" if token else "")
    return (server, thread), bound
