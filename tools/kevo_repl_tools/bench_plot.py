"""`kevo-repl bench ... --plot FILE.png`: bench results drawn against their anchors.

One panel per result: catch-up rate (replica, our applier, the bare store, Redis with no
persistence and with AOF always), lag percentiles against the targets, and write throughput
per API against Redis. ``python -m kevo_repl_tools.bench_plot OUT.png A.json B.json ...``
combines saved ``--json`` outputs into one figure (bench/RESULTS.md uses it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the issue's lag targets (p99, ms) at 20k and 100k entries/s
LAG_TARGETS_MS = {20_000: 5.0, 100_000: 10.0}


def _bars(ax: Any, labels: list[str], values: list[float], title: str, unit: str) -> None:
    colours = ["tab:blue" if not lb.startswith("redis") else "tab:red" for lb in labels]
    ax.bar(range(len(values)), values, color=colours)
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    for i, v in enumerate(values):
        ax.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=7)


def _catchup(ax: Any, r: dict[str, Any]) -> None:
    pairs = [("replica", "entries_per_s"), ("our applier", "applier_entries_per_s"),
             ("raw store", "raw_entries_per_s"), ("redis none", "redis_none_entries_per_s"),
             ("redis aof always", "redis_aof_always_entries_per_s")]
    got = [(label, float(r[key])) for label, key in pairs if key in r]
    _bars(ax, [g[0] for g in got], [g[1] for g in got],
          f"catch-up of {r['count']:,} entries, {r['applier']}", "entries/s")


def _lag(ax: Any, r: dict[str, Any]) -> None:
    labels = ["p50", "p99", "max"]
    values = [float(r[f"lag_{p}_ms"]) for p in labels]
    ax.bar(labels, values, color="tab:blue")
    target = LAG_TARGETS_MS.get(int(r["rate"]))
    if target is not None:
        ax.axhline(target, color="tab:red", linestyle="--", label=f"p99 target {target:g} ms")
        ax.legend(fontsize=8)
    ax.set_title(f"lag at {r['rate']:,} entries/s, batches of {r['write_batch']}", fontsize=10)
    ax.set_ylabel("ms")


def _write(ax: Any, r: dict[str, Any]) -> None:
    top = max(c["writers"] for c in r["cells"])
    cells = [c for c in r["cells"] if c["writers"] == top and c["batch"] == 1
             and not c["stalled_replica"]]
    labels = [str(c["api"]) for c in cells]
    values = [float(c["writes_per_s"]) for c in cells]
    for persistence in ("none", "aof_always"):
        key = f"redis_{persistence}_writes_per_s"
        if key in r:
            labels.append(f"redis {persistence.replace('_', ' ')}")
            values.append(float(r[key]))
    _bars(ax, labels, values, f"{top} concurrent single-entry writers, {r['applier']}",
          "writes/s")


_PANELS = {"catchup": _catchup, "lag": _lag, "write": _write}


def plot(results: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Draw one panel per result into a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.8 * len(results), 4.2), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        _PANELS[r["scenario"]](ax, r)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("usage: python -m kevo_repl_tools.bench_plot OUT.png RESULT.json...\n")
        return 2
    plot([json.loads(Path(p).read_text()) for p in argv[1:]], argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
