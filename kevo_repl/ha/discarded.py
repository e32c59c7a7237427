"""What rejoins set aside: the `discarded.json` reports under DATA_DIR/discarded-epoch-N/.

A node reports their sum as `discarded_entries` in status and /metrics: entries it held past a
fork point, never replicated into the history it follows now (kept aside, never deleted).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

REPORT_FILE = "discarded.json"
#: one directory per rejoin; more than this many reports are not read (status stays cheap)
MAX_REPORTS = 4096


def report_files(data_dir: Path) -> list[Path]:
    found = sorted(data_dir.glob(f"discarded-epoch-*/{REPORT_FILE}"))
    if len(found) > MAX_REPORTS:
        log.warning("%d rejoin reports in %s; counting the first %d", len(found), data_dir,
                    MAX_REPORTS)
    return found[:MAX_REPORTS]


def discarded_entries(data_dir: Path) -> int:
    """Entries set aside by every rejoin of this node. A report that does not read is named
    in the log and not counted (it is evidence to inspect, not to guess from)."""
    total = 0
    for path in report_files(data_dir):
        try:
            n = json.loads(path.read_bytes())["discarded_entries"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the rejoin report %s: %s", path, exc)
            continue
        if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            total += n
        else:
            log.warning("the rejoin report %s has a bad discarded_entries %r", path, n)
    return total
