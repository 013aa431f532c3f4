"""Loss against epoch, one line per swept value (the seed's Figures 1-5), mean ± std over seeds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_lab.report.runs import Run, Sweep
from fmnist_lab.report.stats import mean_std
from fmnist_lab.report.tables import status_cell

# A legend longer than this (an optuna search's 40 trials) would squeeze the panels to
# nothing: the figure draws the lines alone, and the section's table names them.
LEGEND_ROWS = 20


def pyplot() -> Any:
    """matplotlib.pyplot drawing into files only (no display on clusters and CI); imported
    when a figure is drawn, so the report's tables need no matplotlib start-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

def file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "sweep"


def _curves(runs: list[Run], key: str, epochs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over runs per epoch (or step), as the tables compute them
    (stats.mean_std); a diverged run adds only its finite epochs; where one run is left, no
    band (std 0)."""
    stats = [mean_std([next((e.get(key) for e in run.history if e.get(run.unit) == epoch), None)
                       for run in runs]) for epoch in epochs]
    mean = np.array([np.nan if m is None else m for m, _, _ in stats])
    std = np.array([0.0 if s is None else s for _, s, _ in stats])
    return mean, std


def use_log_scale(values: list[float], forced: bool = False) -> bool:
    """Log y when asked, or when positive values span more than two decades (lr=1 beside 0.01)."""
    return bool(values) and min(values) > 0 and (forced or max(values) / min(values) > 100)


def band_text(sweep: Sweep) -> str:
    """What a loss figure's lines and bands are over: rows part-way through a study have
    fewer seeds than others, so a range ("mean ± std over 1-2 seeds")."""
    counts = sorted({len(row.completed) for row in sweep.rows} - {0}) or [1]
    seeds = str(counts[-1]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return "one seed" if seeds == "1" else f"mean ± std over {seeds} seeds"


def plot_losses(sweep: Sweep, path: Path, log_y: bool = False) -> Path:
    """Training and validation loss against epoch, one line per swept value (Figures 1-5)."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    # The x axis: epochs, or optimizer steps where the runs had a step budget.
    unit = next((r.unit for r in sweep.runs if r.history), "epoch")
    epochs = np.array(sorted({e[unit] for r in sweep.runs for e in r.history if unit in e}))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    colors = plt.get_cmap("tab10" if len(sweep.rows) <= 10 else "tab20").colors
    handles = {}  # one legend for both panels, keyed by label
    drawn: set[int] = set()  # rows with a line in either panel
    panels = (("train_loss", "Training loss"), ("val_loss", "Validation loss"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        curves = []
        for i, row in enumerate(sweep.rows):
            runs = [r for r in row.runs if r.history]
            if runs and len(epochs):
                mean, std = _curves(runs, key, epochs)
                ok = ~np.isnan(mean)
                if ok.any():
                    curves.append((i, row, epochs[ok], mean[ok], std[ok]))
        log = use_log_scale([v for *_, mean, _ in curves for v in mean], log_y)
        for i, row, x, mean, std in curves:
            color = colors[i % len(colors)]
            (line,) = ax.plot(x, mean, marker="o", markersize=4, color=color)
            handles.setdefault(row.label + (" (diverged)" if row.diverged else ""), line)
            drawn.add(i)
            if row.diverged:  # the last finite point before the loss went non-finite
                ax.plot(x[-1:], mean[-1:], marker="X", markersize=10, color=color)
            # A log axis cannot show a band below zero: there it stops at the mean.
            lower = np.where(mean - std > 0, mean - std, mean) if log else mean - std
            ax.fill_between(x, lower, mean + std, color=color, alpha=0.2, linewidth=0)
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("optimizer step" if unit == "step" else "epoch")
        ax.set_ylabel("cross-entropy loss" + (" (log scale)" if log else ""))
        if 0 < len(epochs) <= 20:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    # A value with nothing finite to draw (diverged in epoch 1, failed) still gets its entry.
    for i, row in enumerate(sweep.rows):
        if i not in drawn:
            why = "diverged: no finite loss" if row.diverged else status_cell(row)
            handles[f"{row.label} ({why})"] = Line2D([], [], color=colors[i % len(colors)],
                                                     marker="X", linestyle="none")
    many = len(handles) > LEGEND_ROWS
    if handles and not many:
        fig.legend(handles.values(), handles.keys(), loc="outside right upper",
                   title=", ".join(sweep.keys) or None)
    by = f"{len(sweep.keys)} parameters" if many else ", ".join(sweep.keys) or "run"
    fig.suptitle(f"{sweep.name}: loss against {unit} by {by} ({band_text(sweep)})"
                 + (f"\n{len(sweep.rows)} configurations, one colour each; the section's table "
                    "names them" if many else ""))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
