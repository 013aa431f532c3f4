"""The report's tables (markdown) and results.csv: one row per swept value, or per run."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmnist_lab.keys import HELD_FIXED, SEED_RECIPE
from fmnist_lab.report.runs import Row, Run, Sweep, format_value, relative, value_key
from fmnist_lab.report.stats import mean_std
from fmnist_lab.results import flatten

# The seed study's published numbers, shown beside ours where an experiment has them.
SEED_NUMBERS = json.loads((Path(__file__).parent / "seed_study.json").read_text())




def cell(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 4) -> str:
    if mean is None:
        return "—"
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def status_cell(row: Row) -> str:
    """"completed", "diverged (epoch 3)", "failed", or counts when seeds disagree."""
    counts = Counter(r.status for r in row.runs)
    parts = []
    for status, count in counts.items():
        text = status if len(row.runs) == 1 else f"{count} {status}"
        if status in ("diverged", "collapsed", "pruned"):
            stopped = [r for r in row.runs if r.status == status]
            unit = stopped[0].unit  # epochs, or a step budget's steps
            at = sorted({r.result.get(f"{status}_{unit}") if status != "collapsed"
                         else r.collapsed_at for r in stopped} - {None})
            if at:
                plural = "s" if len(at) > 1 else ""
                text += f" ({unit}{plural} {', '.join(map(str, at))})"
        parts.append(text)
    return ", ".join(parts)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Column:
    """A metric column: `key` of the first or last epoch (or test_acc), how to print it."""

    header: str
    key: str
    last: bool
    scale: float = 1.0
    digits: int = 4

    def stat(self, row: Row) -> tuple[float | None, float | None, int]:
        return row.test_acc() if self.key == "test_acc" else row.stat(self.key, self.last)


def last_epoch_label(sweep: Sweep) -> str:
    """"ep 10" when the sweep's runs trained to the same epoch, else "last ep"; for step
    budgets "step 400" when they share their last step, else "last step"."""
    trained = [r for r in sweep.runs if r.status in ("completed", "collapsed")]
    if trained and trained[0].unit == "step":
        ends = {r.history[-1].get("step") for r in trained}
        return f"step {ends.pop()}" if len(ends) == 1 else "last step"
    lengths = {len(r.history) for r in trained}
    return f"ep {lengths.pop()}" if len(lengths) == 1 else "last ep"


def first_epoch_label(sweep: Sweep) -> str:
    """"ep 1", or a step budget's first validation step ("step 40", else "first step")."""
    trained = [r for r in sweep.runs if r.status in ("completed", "collapsed")]
    if trained and trained[0].unit == "step":
        starts = {r.history[0].get("step") for r in trained}
        return f"step {starts.pop()}" if len(starts) == 1 else "first step"
    return "ep 1"


def metric_columns(sweep: Sweep, acc_name: str = "val acc") -> list[Column]:
    """First and last validation's train loss, val loss and accuracy (epoch 1 and the last
    epoch, or a step budget's first and last validation steps), then test accuracy.

    One-epoch runs get one column per metric: epoch 1 is their last.
    """
    first, last = first_epoch_label(sweep), last_epoch_label(sweep)
    epochs = [(False, first), (True, last)] if last != first else [(True, first)]
    columns = [Column(f"{name} {when}", key, is_last, scale, digits)
               for name, key, scale, digits in (("train loss", "train_loss", 1, 4),
                                                ("val loss", "val_loss", 1, 4),
                                                (f"{acc_name} %", "val_acc", 100, 2))
               for is_last, when in epochs]
    return columns + [Column("test acc %", "test_acc", True, 100, 2)]


def cells(stats: list[tuple[float | None, float | None, int]], columns: list[Column]) -> list[str]:
    return [cell(mean, std, c.scale, c.digits)
            for (mean, std, _), c in zip(stats, columns, strict=True)]


def seed_cell(sweep: Sweep, row: Row) -> str | None:
    """The seed study's own numbers for this row, None where it has none for the sweep."""
    numbers = SEED_NUMBERS.get(sweep.name) if len(sweep.keys) == 1 else None
    if numbers is None:
        return None
    seed = numbers.get(row.label)
    if seed is None:
        return "—"
    return f"{seed_loss_text(seed)}, {seed['acc']:.2f} %"


def seed_loss_text(seed: dict[str, float]) -> str:
    """The seed study's first → last epoch training loss of one of its rows."""
    return f"{seed['train_loss_first']:.4f} → {seed['train_loss_last']:.4f}"


SEED_HEADER = "seed study: train loss ep 1 → ep 10, acc"


def sweep_table(sweep: Sweep) -> str:
    """The seed's Figures 6-10, one row per swept value, mean ± std over seeds, and the
    seed's own numbers beside them where it has them."""
    columns = metric_columns(sweep)
    with_seed = bool(sweep.rows) and seed_cell(sweep, sweep.rows[0]) is not None
    header = [", ".join(sweep.keys) or "run", "n", "status", "params",
              *(c.header for c in columns), "seconds", *([SEED_HEADER] if with_seed else [])]
    rows = []
    for row in sweep.rows:
        params = next((r.result["num_params"] for r in row.runs if r.result.get("num_params")),
                      None)
        seconds, _, _ = mean_std([r.seconds for r in row.completed])
        rows.append([row.label, str(len(row.completed)), status_cell(row),
                     f"{params:,}" if params else "—",
                     *cells([c.stat(row) for c in columns], columns),
                     "—" if seconds is None else f"{seconds:.1f}",
                     *([seed_cell(sweep, row)] if with_seed else [])])
    return markdown_table(header, rows)


def ranked_rows(sweep: Sweep) -> list[tuple[Row, float, float | None, int]]:
    """Rows with a last-epoch validation accuracy, best first, with its mean, std and n.

    Validation, not test, accuracy: the test set stays out of choosing a value. A value that
    diverged or collapsed for any seed is no contender.
    """
    stats = [(row, *row.stat("val_acc", last=True)) for row in sweep.rows if row.contender]
    return sorted((s for s in stats if s[1] is not None), key=lambda s: -s[1])


def best_line(sweep: Sweep) -> str:
    """The best value, and whether its lead over the runner-up exceeds seed-to-seed noise."""
    ranked = ranked_rows(sweep)
    if not ranked:
        return "No value completed every seed above chance: no best value."
    name = ", ".join(sweep.keys)
    best, m1, s1, n1 = ranked[0]
    head = (f"**Best by mean last-epoch validation accuracy:** {name} = `{best.label}`, "
            f"{cell(m1, s1, 100, 2)} % (n={n1})")
    if len(ranked) == 1:
        return head + "; no other value completed to compare with."
    second, m2, s2, n2 = ranked[1]
    lead = (m1 - m2) * 100
    text = (f"{head}, ahead of `{second.label}` ({cell(m2, s2, 100, 2)} %, n={n2}) "
            f"by {lead:.2f} points")
    if s1 is None or s2 is None:
        return text + "; n=1: no noise estimate (run more seeds: `seed=0,1,2`)."
    # The std of the difference of two independent runs: the noise a lead must beat.
    noise = math.hypot(s1, s2) * 100
    verdict = "exceeds" if lead > noise else "does not exceed"
    return f"{text}; the lead {verdict} the seed-to-seed noise (combined std {noise:.2f} points)."


def held_fixed_line(sweep: Sweep) -> str:
    """The runs, what they share (keys.HELD_FIXED: the recipe's keys a reader needs, none of
    the plumbing; SEED_RECIPE's only where held away from the seed's value), and the seeds."""
    runs = sweep.runs
    fixed = [f"{k}={format_value(runs[0].params.get(k))}" for k in HELD_FIXED
             if k not in sweep.keys and any(k in r.params for r in runs)
             and len({value_key(r.params.get(k)) for r in runs}) == 1
             and not (k in SEED_RECIPE and runs[0].params.get(k) == SEED_RECIPE[k])]
    seeds = sorted({r.result.get("seed") for r in runs if r.result.get("seed") is not None})
    return (f"{len(runs)} runs; held fixed: {', '.join(fixed) or 'nothing'}; "
            f"seeds: {', '.join(map(str, seeds)) or 'unknown'}.")


def shared_lines(sweep: Sweep, root: Path, trained_in: dict[Path, str]) -> list[str]:
    """Rows whose runs were trained once for another experiment and reused here."""
    lines = []
    for row in sweep.rows:
        owners = [(r.path / r.result["reused_from"]).resolve() for r in row.runs
                  if r.result.get("reused_from")]
        if owners:
            experiments = sorted({trained_in.get(p, "?") for p in owners})
            lines.append(f"- `{row.label}` shares its {len(owners)} run(s) with "
                         f"{', '.join(f'`{e}`' for e in experiments)} (same config and seed, "
                         f"trained once): {', '.join(f'`{relative(p, root)}`' for p in owners)}")
    return lines


def failed_lines(sweep: Sweep, root: Path) -> list[str]:
    return [f"- failed: `{row.label}` seed {r.result.get('seed')}: {r.result.get('error', '?')} "
            f"(`{relative(r.path, root)}`)" for row in sweep.rows for r in row.runs
            if r.status == "failed"]


def summary_line(sweep: Sweep) -> str:
    """One line for the terminal: how many runs, and the best value or the fold accuracy."""
    if sweep.is_cross_validation:
        mean, std, n = mean_std([row.stat("val_acc", True)[0] for row in sweep.rows])
        return f"{sweep.name}: {n} folds, fold accuracy {cell(mean, std, 100, 2)} %"
    ranked = ranked_rows(sweep)
    best = (f"; best {', '.join(sweep.keys)}={ranked[0][0].label} "
            f"(val acc {cell(*ranked[0][1:3], 100, 2)} %)" if ranked else "")
    return (f"{sweep.name}: {len(sweep.rows)} values, {len(sweep.runs)} runs "
            f"({status_cell(Row((), sweep.runs))}){best}")


RUN_COLUMNS = ["path", "experiment", "status", "seed", "model", "init", "transforms",
               "num_params", "diverged_epoch", "error", "epochs", "test_loss", "test_acc",
               *(f"{when}_{k}" for when in ("ep1", "last")
                 for k in ("train_loss", "train_acc", "val_loss", "val_acc")),
               "seconds", "train_images_per_second", "device", "train_images", "val_images",
               "test_images", "overrides"]


STEP_COLUMNS = ["steps", "diverged_step"]  # where any run had a step budget


def csv_row(run: Run, root: Path) -> dict[str, Any]:
    """One run: its metrics, then every config value under its dotted key."""
    r = run.result
    row: dict[str, Any] = {
        "path": relative(run.path, root), "experiment": run.experiment, "status": run.status,
        "seed": r.get("seed"), "model": run.params.get("model"), "init": run.params.get("init"),
        "transforms": run.params.get("transforms"), "num_params": r.get("num_params"),
        "diverged_epoch": r.get("diverged_epoch"), "error": r.get("error"),
        "epochs": len(run.history), "test_loss": r.get("test_loss"), "test_acc": r.get("test_acc"),
        "seconds": run.seconds, "overrides": " ".join(map(str, r.get("overrides") or [])),
    }
    for when, last in (("ep1", False), ("last", True)):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            row[f"{when}_{key}"] = run.epoch_metric(key, last)
    for key in ("train_images_per_second", "device", "train_images", "val_images", "test_images"):
        row[key] = r.get(key)
    if run.unit == "step":  # a step budget's run: its length in steps, epochs as a fraction
        row.update(steps=run.history[-1].get("step") if run.history else None,
                   diverged_step=r.get("diverged_step"),
                   epochs=run.history[-1].get("epoch") if run.history else 0)
    for key, value in flatten(r.get("config") or {}).items():
        row.setdefault(key, json.dumps(value) if isinstance(value, list | dict) else value)
    return row


def write_csv(runs: list[Run], root: Path, path: Path) -> Path:
    rows = [csv_row(run, root) for run in runs]
    steps = STEP_COLUMNS if any(run.unit == "step" for run in runs) else []
    config_columns = sorted({k for row in rows for k in row} - set(RUN_COLUMNS) - set(steps))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_COLUMNS + steps + config_columns,
                                restval="")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return path
