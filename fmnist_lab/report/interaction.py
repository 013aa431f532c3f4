"""experiment=interaction: learning rate x batch size, a heatmap, and whether the best lr moves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fmnist_lab.report.figures import pyplot
from fmnist_lab.report.runs import Row, Sweep, format_value
from fmnist_lab.report.tables import ranked_rows, status_cell

# experiment=interaction: the two keys whose interaction the seed's hypothesis is about.
INTERACTION_KEYS = ("optimizer.lr", "data.batch_size")


def is_interaction(sweep: Sweep) -> bool:
    return sorted(sweep.keys) == sorted(INTERACTION_KEYS)


def grid(sweep: Sweep) -> tuple[list[Any], list[Any], dict[tuple[Any, Any], Row]]:
    """(lrs, batch sizes, (lr, batch size) -> row) of an interaction sweep."""
    i, j = (sweep.keys.index(k) for k in INTERACTION_KEYS)
    cells = {(row.values[i], row.values[j]): row for row in sweep.rows}
    return sorted({lr for lr, _ in cells}), sorted({b for _, b in cells}), cells


def best_lr_by_batch_size(sweep: Sweep) -> dict[Any, Any]:
    """batch size -> the learning rate with the best mean last-epoch validation accuracy
    among values that completed every seed above chance (ranked_rows)."""
    i, j = (sweep.keys.index(k) for k in INTERACTION_KEYS)
    best: dict[Any, Any] = {}
    for row, *_ in ranked_rows(sweep):  # best first
        best.setdefault(row.values[j], row.values[i])
    return dict(sorted(best.items()))


def scaling_line(sweep: Sweep) -> str:
    """Does the best learning rate move with the batch size, as the linear scaling rule
    (lr proportional to batch size) predicts?"""
    best = best_lr_by_batch_size(sweep)
    if len(best) < 2:
        return "Too few batch sizes completed to say whether the best learning rate moves."
    listing = ", ".join(f"{format_value(b)} → {format_value(lr)}" for b, lr in best.items())
    lrs = list(best.values())
    if len(set(lrs)) == 1:
        verdict = ("it does not move with the batch size: one value is best at every batch "
                   "size, against the linear scaling rule")
    elif all(a <= b for a, b in zip(lrs, lrs[1:], strict=False)):
        verdict = ("it rises with the batch size (never falls), as the linear scaling rule "
                   "predicts (lr ∝ batch size)")
    else:
        verdict = ("it moves with the batch size but does not rise monotonically, as the "
                   "linear scaling rule would have it")
    if len(set(lrs)) > 1:
        verdict += "; no learning rate is best at every batch size, as the seed supposed"
    return f"**Best learning rate per batch size:** {listing}; {verdict}."


def plot_interaction(sweep: Sweep, path: Path) -> Path:
    """Heatmap of mean last-epoch validation accuracy, lr across and batch size down, the
    best cell outlined; cells that diverged or collapsed for a seed are marked and left
    out of the colour scale."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    lrs, sizes, cells = grid(sweep)
    acc = np.full((len(sizes), len(lrs)), np.nan)
    fig, ax = plt.subplots(figsize=(1.4 * len(lrs) + 2.5, 0.9 * len(sizes) + 1.8),
                           layout="constrained")
    labels = {}
    for (lr, size), row in cells.items():
        y, x = sizes.index(size), lrs.index(lr)
        mean = row.stat("val_acc", last=True)[0]
        if row.contender and mean is not None:
            acc[y, x] = mean * 100
            labels[y, x] = f"{mean * 100:.2f}"
        else:
            labels[y, x] = "diverged" if row.diverged else status_cell(row)
    image = ax.imshow(np.ma.masked_invalid(acc), cmap="viridis", aspect="auto")
    middle = np.nanmean(acc) if np.isfinite(acc).any() else 0.0
    for (y, x), text in labels.items():  # white on the dark half of the colour map
        color = "white" if np.isfinite(acc[y, x]) and acc[y, x] < middle else "black"
        ax.text(x, y, text, ha="center", va="center", fontsize=9, color=color)
    fig.colorbar(image, ax=ax, label="mean validation accuracy, last epoch (%)")
    ranked = ranked_rows(sweep)
    if ranked:
        i, j = (sweep.keys.index(k) for k in INTERACTION_KEYS)
        best = ranked[0][0]
        x, y = lrs.index(best.values[i]), sizes.index(best.values[j])
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", lw=3))
    ax.set_xticks(range(len(lrs)), [format_value(v) for v in lrs])
    ax.set_yticks(range(len(sizes)), [format_value(v) for v in sizes])
    ax.set_xlabel("learning rate (optimizer.lr)")
    ax.set_ylabel("batch size (data.batch_size)")
    seeds = {r.result.get("seed") for r in sweep.runs}
    ax.set_title(f"{sweep.name}: best cell outlined ({len(seeds)} seed(s))")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def interaction_section(sweep: Sweep, heatmap: Path) -> list[str]:
    return [scaling_line(sweep), "",
            f"![{sweep.name}: validation accuracy by learning rate and batch size]"
            f"({heatmap.name})", ""]
