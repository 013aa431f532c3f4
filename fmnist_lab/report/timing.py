"""How long a study took: the union of its runs' epochs on the wall clock, seed by seed."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from fmnist_lab.report.runs import Run
from fmnist_lab.report.stats import finite
from fmnist_lab.report.tables import markdown_table


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
    spans_of = {id(r): epoch_spans(r) for r in trained}  # each run's history read once
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
    lines = ["## Time", "",
             "Wall time while the runs trained: the union of their epochs on the wall clock "
             "(start-up, the test pass and gaps between sittings left out; runs side by side "
             "count once, so seeds that overlapped add up to more than all). Run time adds "
             "every run's epochs. Trained runs only, not reused ones.", "",
             markdown_table(["seed", "runs", "wall time", "run time"], rows), "",
             "Machines: " + "; ".join(f"{name}: {n} run(s)" for name, n in
                                      sorted(machines.items())) + "."]
    if len(clocked) < len(trained):
        lines.append(f"{len(trained) - len(clocked)} trained run(s) recorded before epochs "
                     "carried their clock are left out.")
    return lines + [""]
