"""The seed's Figure 11: a row per fold, the mean over folds, the spread, and no climb."""

from __future__ import annotations

import numpy as np

from fmnist_lab.report.runs import FOLD_KEY, Row, Sweep, format_value
from fmnist_lab.report.stats import mean_std, spearman
from fmnist_lab.report.tables import (
    SEED_HEADER,
    cells,
    markdown_table,
    metric_columns,
    seed_cell,
    status_cell,
)

# Spearman ρ at or above this over ≥ 4 folds is a climb (5 folds: p ≈ 0.04, one-sided).
CLIMB_RHO = 0.9


def cross_validation_section(sweep: Sweep) -> str:
    """The seed's Figure 11: one row per fold, a mean ± std row, the spread, and no climb."""
    others = [i for i, k in enumerate(sweep.keys) if k != FOLD_KEY]
    fold_at = sweep.keys.index(FOLD_KEY)
    # Folds of other swept values (say two learning rates) get a table each.
    tables: dict[tuple[str, ...], list[Row]] = {}
    for row in sweep.rows:
        tables.setdefault(tuple(format_value(row.values[i]) for i in others), []).append(row)
    columns = metric_columns(sweep, acc_name="fold acc")
    parts = []
    for rest, rows in tables.items():
        if rest:
            parts.append(f"**{', '.join(sweep.keys[i] for i in others)} = {', '.join(rest)}**")
        with_seed = not rest and seed_cell(sweep, rows[0]) is not None
        header = ["fold", "n", "status", *(c.header for c in columns),
                  *([SEED_HEADER] if with_seed else [])]
        per_fold = [[c.stat(r) for c in columns] for r in rows]
        body = [[format_value(r.values[fold_at]), str(len(r.completed)), status_cell(r),
                 *cells(stats, columns), *([seed_cell(sweep, r)] if with_seed else [])]
                for r, stats in zip(rows, per_fold, strict=True)]
        # The mean row is over folds: each fold counts once, whatever its number of seeds.
        summary = cells([mean_std([fold[j][0] for fold in per_fold])
                          for j in range(len(columns))], columns)
        body.append(["**mean ± std**", str(len(rows)), "over folds", *summary,
                     *([""] if with_seed else [])])
        parts += [markdown_table(header, body), "", spread_line(rows, fold_at)]
    return "\n".join(parts)


def spread_line(rows: list[Row], fold_at: int) -> str:
    """How far fold accuracies spread, and whether they climb with the fold index (leakage)."""
    folds, accs, seed_stds = [], [], []
    for row in rows:
        mean, std, _ = row.stat("val_acc", last=True)
        if mean is not None:
            folds.append(row.values[fold_at])
            accs.append(mean * 100)
        if std is not None:
            seed_stds.append(std * 100)
    if len(accs) < 2:
        return "Too few folds completed to state a spread."
    lo, hi = int(np.argmin(accs)), int(np.argmax(accs))
    text = (f"Fold accuracy (last-epoch accuracy on the held-out fold) ranges from "
            f"{accs[lo]:.2f} % (fold {folds[lo]}) to {accs[hi]:.2f} % (fold {folds[hi]}): "
            f"spread {accs[hi] - accs[lo]:.2f} points, std {np.std(accs, ddof=1):.2f} points "
            f"over {len(accs)} folds")
    # With several seeds, the noise a fold-to-fold difference should be measured against.
    if seed_stds:
        text += f" (seed-to-seed std within a fold: {np.mean(seed_stds):.2f} points)"
    text += ". "
    rho = spearman(folds, accs)
    if rho is None:
        return text + "All folds score the same: no climb with fold order."
    if len(accs) >= 4 and round(rho, 6) >= CLIMB_RHO:  # 0.9 computes as 0.8999…
        return text + (f"Accuracy climbs with the fold index (Spearman ρ = {rho:.2f}): later folds "
                       "may have trained on earlier folds' validation images; check for leakage.")
    return text + (f"Spearman correlation between fold index and accuracy ρ = {rho:.2f}: no climb "
                   "with fold order, as expected when every fold trains a fresh network (the "
                   "seed's folds climbed 91 % → 99 % because one network kept training).")
