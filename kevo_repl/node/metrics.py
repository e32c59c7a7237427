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
}
_REPLICA_COUNTERS = {
    "reconnects": ("kevo_repl_replica_reconnects", "Reconnects to the primary"),
    "corrupt_entries": ("kevo_repl_replica_corrupt_entries",
                        "Entries that arrived corrupt and were re-requested"),
    "gaps": ("kevo_repl_replica_gaps", "Sequence gaps seen in the stream"),
    "duplicates_skipped": ("kevo_repl_replica_duplicates_skipped",
                           "Entries skipped because they were already applied"),
}


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
        if role == "replica":
            yield from self._replica(st)
        else:
            yield from self._primary(st)

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
        yield GaugeMetricFamily("kevo_repl_primary_first_sequence",
                                "First sequence still retained in the WAL",
                                value=st.get("first_sequence", 0))
        if "wal_bytes" in st:
            yield GaugeMetricFamily("kevo_repl_primary_wal_bytes", "Bytes of WAL on disk",
                                    value=st["wal_bytes"])
        families = {
            "acked_sequence": GaugeMetricFamily(
                "kevo_repl_primary_slot_acked_sequence", "Highest sequence a replica acked",
                labels=["replica_id"]),
            "lag_entries": GaugeMetricFamily(
                "kevo_repl_primary_slot_lag_entries", "Entries a replica has not acked",
                labels=["replica_id"]),
            "connected": GaugeMetricFamily(
                "kevo_repl_primary_slot_connected", "1 while the replica streams",
                labels=["replica_id"]),
            "stalled": GaugeMetricFamily(
                "kevo_repl_primary_slot_stalled", "1 when connected, behind and not acking",
                labels=["replica_id"]),
        }
        for slot in st.get("replicas", []):
            values: dict[str, Any] = (
                slot if isinstance(slot, dict) else {k: getattr(slot, k) for k in families}
                | {"replica_id": slot.replica_id}
            )
            for key, fam in families.items():
                fam.add_metric([str(values["replica_id"])], float(values[key]))
        yield from families.values()


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
    server, thread = metrics_http.start(host, port, registry, token, tls_cert, tls_key)
    bound = f"{host}:{server.server_port}"
    log.info("metrics on %s://%s/metrics%s", "https" if tls_cert else "http", bound,
             " (token required)" if token else "")
    return (server, thread), bound
