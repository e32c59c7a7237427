"""Printing a chaos run's report (`kevo-repl chaos`): the numbers, and on failure the seed,
the rerun command, the schedule, the executed timeline and every violation."""

from __future__ import annotations

from kevo_repl_tools.chaos import ChaosReport
from kevo_repl_tools.chaos_schedule import format_schedule


def format_report(rep: ChaosReport, *, timeline: bool | None = None) -> str:
    """The report as text; the schedule and timeline are included when the run failed (or
    when `timeline` is true)."""
    show_timeline = (not rep.ok) if timeline is None else timeline
    lines = [
        f"chaos seed {rep.seed}: {'PASSED' if rep.ok else 'FAILED'} "
        f"({len(rep.violations)} violations) in {rep.elapsed_s:.1f}s "
        f"({rep.duration_s:g}s of faults)",
        f"rerun:        {rep.rerun_command()}",
        "appliers:     " + ", ".join(f"{k} {v}" for k, v in rep.appliers.items()),
        "faults:       " + (", ".join(f"{k} {v}" for k, v in rep.faults_per_kind.items())
                            or "none") + f" ({sum(rep.faults_per_kind.values())} in all)",
        f"writes:       {rep.writes_returned} returned ({rep.entries_returned} entries, "
        f"last sequence {rep.last_sequence}), {rep.writes_failed} failed calls",
        "semi-sync:    " + (", ".join(f"{k} {v}" for k, v in rep.semisync.items()) or "none"),
        "restarts:     " + ", ".join(f"{k} {v}" for k, v in rep.restarts.items()),
        "bootstraps:   " + ", ".join(f"{k} {v}" for k, v in rep.bootstraps.items()),
        f"corrupted:    {rep.corrupted_chunks} chunks in flight",
        "batches:      " + ", ".join(f"{k} {v}" for k, v in sorted(rep.batches_applied.items())),
        "convergence:  " + ", ".join(
            f"{k} {'-' if v is None else f'{v:.2f}s'}" for k, v in rep.convergence_s.items()
        ),
        "peak RSS:     " + ", ".join(f"{k} {v:.0f} MB" for k, v in rep.peak_rss_mb.items()),
        f"processes:    {rep.processes_started} started, all gone"
        if not any(v.check == "leak" for v in rep.violations)
        else f"processes:    {rep.processes_started} started, some left (see violations)",
    ]
    if rep.stores:
        lines.append("stores:       " + ", ".join(
            f"{k} {s['keys']} keys at {s['position']}" for k, s in rep.stores.items()
        ))
    if rep.run_dir_kept:
        lines.append(f"run dir:      {rep.run_dir}")
    if show_timeline:
        lines.append(f"schedule (seed {rep.seed}):")
        lines.append(format_schedule(rep.schedule) or "  (no faults)")
        lines.append("timeline:")
        lines += [str(ev) for ev in rep.timeline]
    if rep.violations:
        lines.append("VIOLATIONS:")
        lines += [f"  {v}" for v in rep.violations]
    return "\n".join(lines)

