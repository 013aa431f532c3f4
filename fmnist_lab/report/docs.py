"""The record's tables in the docs: under each "(record: `NAME`" line, the seed's beside ours."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmnist_lab.report.budget import budget_answer
from fmnist_lab.report.runs import ReportError, Row, Sweep, group_sweeps, load_runs
from fmnist_lab.report.search import search_comparison
from fmnist_lab.report.stats import mean_std
from fmnist_lab.report.tables import (
    SEED_NUMBERS,
    cell,
    last_epoch_label,
    markdown_table,
    seed_loss_text,
    status_cell,
)
from fmnist_lab.report.tasks import tasks_tunability, tasks_verdicts
from fmnist_lab.results import write_text_atomic

# A docs line naming an experiment of the record, "(record: `learning_rate`; ...)": the
# table that follows it is that experiment's, the seed's numbers beside ours.
README_RECORD = re.compile(r"\(record: `(\w+)`")


def percent(mean: float | None, std: float | None) -> str:
    text = cell(mean, std, 100, 2)
    return text if mean is None else f"{text} %"


def seed_comparison_table(name: str, sweep: Sweep | None, key_header: str) -> str:
    """One experiment in the docs (docs/results.md): per value, n, the first and last epoch's
    training loss and the accuracy, the seed's beside ours; the seed's values not run yet say so.
    Cross-validation also gives each fold's test accuracy (the seed's accuracy there is the
    fold's). `sweep` None: nothing of it recorded yet."""
    cv = sweep.is_cross_validation if sweep else name == "cross_validation"
    last = last_epoch_label(sweep) if sweep else "ep 10"
    acc = "fold acc" if cv else "test acc"
    header = [", ".join(sweep.keys) if sweep else key_header, "n",
              f"train loss ep 1 → {last}: seed's", "ours", f"{acc}: seed's", "ours",
              *(["test acc: ours"] if cv else []), "status"]
    numbers = SEED_NUMBERS.get(name, {})

    def seed_cells(label: str) -> list[str]:
        seed = numbers.get(label)
        if seed is None:
            return ["—", "—"]
        return [seed_loss_text(seed), f"{seed['acc']:.2f} %"]

    rows = []
    for row in sweep.rows if sweep else []:
        first, last_loss = (cell(*row.stat("train_loss", last=at)[:2]) for at in (False, True))
        loss = "—" if first == "—" else f"{first} → {last_loss}"
        ours_acc = percent(*row.stat("val_acc", last=True)[:2]) if cv else \
            percent(*row.test_acc()[:2])
        loss_seed, acc_seed = seed_cells(row.label)
        rows.append([row.label, str(len(row.completed)), loss_seed, loss, acc_seed, ours_acc,
                     *([percent(*row.test_acc()[:2])] if cv else []), status_cell(row)])
    recorded = {row.label for row in sweep.rows} if sweep else set()
    for label in numbers:
        if label not in recorded:
            loss_seed, acc_seed = seed_cells(label)
            rows.append([label, "0", loss_seed, "—", acc_seed, "—", *(["—"] if cv else []),
                         "not run yet"])
    mean_row = _fold_mean_row(sweep, numbers) if cv and sweep else None
    if mean_row:
        rows.append(mean_row)
    return markdown_table(header, rows)


def _fold_mean_row(sweep: Sweep, numbers: dict[str, dict[str, float]]) -> list[str] | None:
    """Mean ± std over the folds (each fold once, whatever its seeds), the seed's beside;
    None below two completed folds, where a mean says nothing."""
    folds = len([row for row in sweep.rows if row.completed])
    if folds < 2:
        return None
    def over_folds(stat: Callable[[Row], tuple[float | None, float | None, int]]) -> tuple:
        return mean_std([stat(row)[0] for row in sweep.rows])[:2]

    first, last = (cell(*over_folds(lambda r, at=at: r.stat("train_loss", last=at)))
                   for at in (False, True))
    seed = {key: mean_std([n[key] for n in numbers.values()])[0]
            for key in ("train_loss_first", "train_loss_last", "acc")} if numbers else {}
    return ["**mean ± std**", f"{folds} folds", seed_loss_text(seed) if seed else "—",
            f"{first} → {last}", f"{seed['acc']:.2f} %" if seed else "—",
            percent(*over_folds(lambda r: r.stat("val_acc", last=True))),
            percent(*over_folds(Row.test_acc)), "over folds"]


def compare_readme_table(summary: dict[str, Any]) -> str:
    """The seed's Figure 12 beside ours (`compare.json` of fmnist_lab.compare): each compared
    layer's correlation matrix, its shape, the mean and std of all its entries (the seed's
    statistics, diagonal included) and the mean off the diagonal."""
    seed_numbers = SEED_NUMBERS.get("compare", {})
    header = ["layer", "matrix: seed's", "ours", "mean, all entries: seed's", "ours",
              "std: seed's", "ours", "mean off the diagonal", "dead units"]
    rows = []
    for name, layer in summary["layers"].items():
        seed = seed_numbers.get(name)
        shape = "({}, {})".format(*layer["shape"])
        rows.append([f"{layer['model']} ({layer['network']}), {layer['description']}",
                     "({}, {})".format(*seed["shape"]) if seed else "—", shape,
                     f"{seed['mean']:.4f}" if seed else "—", f"{layer['mean']:.4f}",
                     f"{seed['std']:.4f}" if seed else "—", f"{layer['std']:.4f}",
                     f"{layer['offdiag_mean']:.4f}",
                     f"{layer['dead_units']} of {layer['units']}"])
    return markdown_table(header, rows)


def update_readme_tables(text: str, sweeps: list[Sweep],
                         compare: dict[str, Any] | None = None,
                         tasks: str | None = None, search: str | None = None,
                         budget: str | None = None, tunability: str | None = None) -> str:
    """`text` with the table after each "(record: `EXPERIMENT`" line regenerated from
    `sweeps` ("(record: `compare`": from `compare`, a compare.json; "(record: `tasks`": the
    `tasks` verdict table; "(record: `search`": the searches side by side; "(record:
    `budget`": lr* by data and steps, then the two effects; "(record: `tunability`": the
    tasks' tunability per setting); a table of an experiment
    neither recorded nor in the seed is left alone."""
    by_name = {sweep.name: sweep for sweep in sweeps}
    made = {"compare": compare_readme_table(compare) if compare else None, "tasks": tasks,
            "search": search, "budget": budget, "tunability": tunability}
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        found = README_RECORD.search(lines[i])
        i += 1
        if not found or (made[found[1]] is None if found[1] in made else
                         found[1] not in by_name and found[1] not in SEED_NUMBERS):
            continue
        while (i < len(lines) and not lines[i].startswith(("|", "#"))
               and not README_RECORD.search(lines[i])):
            out.append(lines[i])
            i += 1
        end = i
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        # The table: replaced whole (a made table may be two, a blank line between them),
        # its first header cell kept for a new one.
        while (found[1] in made and end + 1 < len(lines) and lines[end] == ""
               and lines[end + 1].startswith("|")):
            end += 1
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
        if end > i:
            key_header = lines[i].strip("|").split("|")[0].strip()
            table = made.get(found[1]) or seed_comparison_table(
                found[1], by_name.get(found[1]), key_header)
            out += table.split("\n")
            i = end
    return "\n".join(out)


def update_readme(readme: Path, root: Path) -> bool:
    """Regenerate `readme`'s record tables from the runs below `root`; whether it changed."""
    try:
        text = readme.read_text()
    except OSError as e:
        raise ReportError(f"--readme {readme}: cannot read it ({e.strerror})") from None
    if not README_RECORD.search(text):
        raise ReportError(f"--readme {readme}: no line names an experiment as "
                          "(record: `NAME`...), so it has no table to regenerate")
    found = sorted(root.rglob("compare.json"))
    compare = json.loads(found[0].read_text()) if found else None
    runs = load_runs(root)
    updated = update_readme_tables(text, group_sweeps(runs, root), compare, tasks_verdicts(runs),
                                   search_comparison(root, runs), budget_answer(runs),
                                   tasks_tunability(runs) if "`tunability`" in text else None)
    if updated != text:
        write_text_atomic(readme, updated)
    return updated != text
