"""How long a study took: the union of its runs' epochs on the wall clock, seed by seed."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from fmnist_lab.report.runs import Run
from fmnist_lab.report.stats import finite
from fmnist_lab.report.tables import markdown_table


def run_span(run: Run) -> tuple[float, float] | None:
    """When the whole run ran, from entering training to its results (set-up, every epoch,
    the test pass), for runs that record their seconds by phase in one sitting; None for
    older runs and resumed ones (their epochs give their spans)."""
    seconds = run.result.get("seconds")
    ended = run.history[-1].get("ended") if run.history else None
    if not isinstance(seconds, dict) or not isinstance(ended, str) or resumed(run):
        return None
    last = datetime.fromisoformat(ended).timestamp()
    test = finite(seconds.get("test")) or 0.0
    total = finite(seconds.get("total")) or 0.0
    return last - (total - test), last + test


def resumed(run: Run) -> bool:
    """Whether the run was cut off and resumed: it says so, or (recorded by earlier code) its
    phases add up to more than its total, which counted the last sitting only."""
    return bool(run.result.get("resumed_after_epoch")) or not phases_add_up(run)


def phases_add_up(run: Run) -> bool:
    """Whether the run's seconds by phase fit in its total (no negative rest)."""
    seconds = run.result.get("seconds")
    return not isinstance(seconds, dict) or (finite(seconds.get("other")) or 0.0) >= 0


def epoch_spans(run: Run) -> list[tuple[float, float]]:
    """When each of the run's epochs trained on the wall clock: (start, end), POSIX seconds.
    Runs recorded before epochs carried their clock (`ended`) have none."""
    spans = []
    for entry in run.history:
        seconds, ended = finite(entry.get("seconds")), entry.get("ended")
        if seconds is not None and isinstance(ended, str):
            end = datetime.fromisoformat(ended).timestamp()
            spans.append((end - seconds, end))
    return spans


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one span: runs side by side count once, gaps not at all."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def machine_name(run: Run) -> str:
    m = run.result.get("machine") or {}
    where = m.get("gpu") or f"{m.get('cpu', 'unknown CPU')} ({m.get('cpu_count', '?')} cores)"
    threads = m.get("torch_threads")
    return where if m.get("gpu") or not threads else f"{where}, {threads} torch thread(s) a run"


def time_section(runs: list[Run]) -> list[str]:
    """The study's wall time, seed by seed, measured by its own epochs' clocks."""
    trained = [r for r in runs if not r.result.get("reused_from")]
    # Each run's history read once: the whole run where it records its phases, else its epochs.
    spans_of = {id(r): [run_span(r)] if run_span(r) else epoch_spans(r) for r in trained}
    clocked = [r for r in trained if spans_of[id(r)]]
    if not clocked:
        return []
    by_seed: dict[Any, list[Run]] = defaultdict(list)
    for run in clocked:
        by_seed[run.result.get("seed")].append(run)
    rows = []
    for label, group in [*((str(s), by_seed[s]) for s in sorted(by_seed, key=str)),
                         ("**all**", clocked)]:
        spans = [span for run in group for span in spans_of[id(run)]]
        rows.append([label, str(len(group)), duration(union_seconds(spans)),
                     duration(sum(end - start for start, end in spans))])
    machines = Counter(machine_name(r) for r in clocked)
    whole = all(run_span(r) for r in clocked)
    counted = ("each run from entering training to its results (set-up, epochs, test)" if whole
               else "their epochs (set-up and the test pass left out)")
    lines = ["## Time", "",
             f"Wall time while the runs trained: the union on the wall clock of {counted}; "
             "process start-up and gaps between sittings are left out, and runs side by side "
             "count once, so seeds that overlapped add up to more than all. Run time adds the "
             "runs' own. Trained runs only, not reused ones.", "",
             markdown_table(["seed", "runs", "wall time", "run time"], rows), "",
             "Machines: " + "; ".join(f"{name}: {n} run(s)" for name, n in
                                      sorted(machines.items())) + "."]
    if len(clocked) < len(trained):
        lines.append(f"{len(trained) - len(clocked)} trained run(s) recorded before epochs "
                     "carried their clock are left out.")
    return lines + ["", *phase_table(clocked)]


PHASES = ("data", "train", "validate", "test", "other", "total")


def phase_table(runs: list[Run]) -> list[str]:
    """Where a run's seconds go, mean per run by task (or experiment; and step budget, where
    runs had one): reading and splitting
    the data, training, validating, testing, the rest (building the trainer and network,
    checkpoints, Lightning's hooks), for runs that record their phases."""
    by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        seconds = run.result.get("seconds")
        # Left out: resumed runs recorded by earlier code, whose total missed earlier sittings.
        if isinstance(seconds, dict) and run.result.get("status") == "completed" \
                and phases_add_up(run):
            group = str(run.params.get("task") or run.experiment)
            steps = run.params.get("trainer.max_steps")
            if isinstance(steps, int) and steps >= 1:  # a step budget: its length varies
                group += f", {steps:,} steps"
            by_group[group].append(seconds)
    if not by_group:
        return []
    rows = []
    for group, records in by_group.items():
        means = {p: sum(finite(r.get(p)) or 0.0 for r in records) / len(records)
                 for p in PHASES}
        share = (means["data"] + means["other"]) / means["total"] if means["total"] else 0.0
        rows.append([group, str(len(records)), *(f"{means[p]:.1f}" for p in PHASES),
                     f"{share * 100:.1f} %"])
    return ["Where a completed run's seconds go, mean per run (the process's own start-up, "
            "once per sweep, is not in them):", "",
            markdown_table(["task or experiment", "runs", *PHASES, "data + other"], rows), ""]
