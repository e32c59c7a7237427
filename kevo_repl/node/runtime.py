"""Process-wide settings of a node process (not of a library user's process)."""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

#: allocations between young-generation collections. Python's default (700) makes a replica
#: that decodes batches of thousands of entries spend most of its time in the collector:
#: every batch allocates tens of thousands of tuples and bytes, none of them cyclic.
GC_GEN0_THRESHOLD = 100_000


def tune_gc() -> None:
    """Move everything allocated so far (imports, configuration) out of the collector's
    view and collect the young generation far less often. Only the node's own process
    calls this: it changes the collector for the whole interpreter."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, max(gen1, 50), max(gen2, 100))
    log.debug("gc thresholds %s, %d objects frozen", gc.get_threshold(), gc.get_freeze_count())
