"""hparams_search=optuna: a search's trials by state, its best trial, optuna's parameter
importances, and two figures: the trials in parallel coordinates, and validation accuracy
against epoch, where a pruned trial's line stops at the epoch its pruner stopped it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_lab.report.figures import file_name, pyplot
from fmnist_lab.report.runs import Run, format_value, relative
from fmnist_lab.report.stats import mean_std
from fmnist_lab.report.tables import cell, markdown_table
from fmnist_lab.report.timing import duration, run_span, union_seconds
from fmnist_lab.search import (
    find_journals,
    load_studies,
    param_importances,
    search_trials,
    trial_counts,
    trial_table,
)

PRUNED_COLOUR = "0.55"
BEST_FOLDER = "best"  # below a search's folder: its best configuration at seeds 0-2 (make search)


def optuna_sections(root: Path, runs: list[Run]) -> tuple[list[str], list[Path]]:
    """For every search's journal below `root`: a section and its figures, after a table of
    the searches side by side. optuna is imported only where a search left its journal (it
    imports no torch either)."""
    md: list[str] = []
    figures: list[Path] = []
    compared = search_comparison(root, runs)
    if compared:
        md += ["## optuna searches side by side", "",
               "Wall time: the union of the trials' runs on the wall clock (set-up, epochs and "
               "test of each); a pruned run counts until it stopped. The best configuration is "
               "each search's best trial trained again at seeds 0-2 (mean ± std).", "",
               compared, ""]
    for journal in find_journals(root):
        prefix = "" if journal.parent == root else file_name(relative(journal.parent, root)) + "_"
        for study in load_studies(journal):
            counts = trial_counts(study)
            listed = ", ".join(f"{n} {state}" for state, n in counts.items()
                               if n and state != "interrupted")
            md += [f"## optuna search: `{study.study_name}` ({relative(journal, root)})", "",
                   f"{sum(v for k, v in counts.items() if k != 'interrupted')} trials: "
                   f"{listed or 'none'}" + (f"; {counts['interrupted']} interrupted attempt(s) "
                                            "asked again" if counts["interrupted"] else "")
                   + ". Pruned trials stopped early and are never the best."]
            rows = trial_table(study)
            done = [r for r in rows if r["state"] == "complete"]
            if not done:
                md += [""]
                continue
            best = study.best_trial
            params = ", ".join(f"{k}={format_value(v)}" for k, v in best.params.items())
            md += [f"Best last-epoch validation accuracy {best.value * 100:.2f} % in trial "
                   f"{best.number} (run `{best.user_attrs.get('run_dir', '?')}`): {params}.", "",
                   *_importance_lines(study), ""]
            drawn = [r for r in rows if r["value"] is not None]
            for path, plot, alt in (
                    (root / f"{prefix}optuna_parallel_coordinates.png", plot_parallel_coordinates,
                     "optuna: trials in parallel coordinates"),
                    (root / f"{prefix}optuna_epochs.png", plot_epochs,
                     "optuna: validation accuracy against epoch, pruned trials stopping early")):
                plot(drawn if plot is plot_parallel_coordinates else search_trials(study), path)
                figures.append(path)
                md += [f"![{alt}]({path.name})", ""]
    return md, figures


def plot_parallel_coordinates(rows: list[dict[str, Any]], path: Path) -> Path:
    """One line per trial through its parameters: completed ones coloured by their objective,
    pruned ones grey and dashed (at their last reported accuracy). Numbers on a log axis
    where they span more than two decades, choices spread evenly in the order seen."""
    plt = pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    names = sorted({k for r in rows for k in r["params"]})
    columns, ticks = [], []
    for name in names:
        values = [r["params"].get(name) for r in rows]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            x = np.asarray(values, dtype=float)
            if x.min() > 0 and x.max() / x.min() > 100:
                x = np.log10(x)
            span = x.max() - x.min() or 1.0
            columns.append((x - x.min()) / span)
            ticks.append(f"{name}\n{format_value(min(values))} … {format_value(max(values))}")
        else:
            order = list(dict.fromkeys(map(str, values)))
            columns.append(np.array([order.index(str(v)) for v in values]) / max(1, len(order) - 1))
            ticks.append(f"{name}\n{' / '.join(order)}")
    objective = np.array([r["value"] for r in rows]) * 100
    complete = np.array([r["state"] == "complete" for r in rows])
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(names)), 5), layout="constrained")
    shown = objective[complete] if complete.any() else objective
    norm = Normalize(shown.min(), shown.max())
    cmap = plt.get_cmap("viridis")
    for i in np.argsort(objective):  # the best drawn last, on top
        line = [c[i] for c in columns]
        if complete[i]:
            ax.plot(range(len(names)), line, color=cmap(norm(objective[i])), marker="o",
                    alpha=0.85)
        else:
            ax.plot(range(len(names)), line, color=PRUNED_COLOUR, linestyle="--", marker=".",
                    alpha=0.6)
    ax.set_xticks(range(len(names)), ticks, fontsize=8)
    ax.set_yticks([0, 1], ["low", "high"])
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                 label="last-epoch validation accuracy (%)")
    pruned = int((~complete).sum())
    if pruned:
        ax.legend([Line2D([], [], color=PRUNED_COLOUR, linestyle="--")],
                  [f"pruned ({pruned})"], loc="lower right", fontsize=8)
    ax.set_title(f"optuna: {int(complete.sum())} completed and {pruned} pruned trials")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_epochs(trials: list[Any], path: Path) -> Path:
    """Each trial's validation accuracy as it reported it, epoch by epoch: completed trials
    coloured by their final value, pruned ones grey, ending where they were stopped."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    finals = [t.value for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    low, high = (min(finals), max(finals)) if finals else (0.0, 1.0)
    cmap = plt.get_cmap("viridis")
    for t in trials:
        steps = sorted(t.intermediate_values)
        if not steps:
            continue
        values = [t.intermediate_values[s] * 100 for s in steps]
        if t.state.name == "COMPLETE":
            shade = (t.value - low) / (high - low) if high > low else 1.0
            ax.plot(steps, values, color=cmap(shade), alpha=0.9)
        else:
            ax.plot(steps, values, color=PRUNED_COLOUR, linestyle="--", alpha=0.7)
            ax.plot(steps[-1:], values[-1:], color=PRUNED_COLOUR, marker="x")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend([Line2D([], [], color=cmap(1.0)), Line2D([], [], color=PRUNED_COLOUR,
                                                        linestyle="--", marker="x")],
              ["completed (colour: final accuracy)", "pruned (x: where it stopped)"],
              loc="lower right", fontsize=8)
    ax.set_title("optuna: validation accuracy by epoch, as each trial reported it")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _importance_lines(study: Any) -> list[str]:
    try:
        importances = param_importances(study)
    except ImportError:
        return ["Parameter importances: optuna's evaluator needs scikit-learn "
                "(`pip install scikit-learn`)."]
    except (RuntimeError, ValueError) as e:  # too few trials, a single value
        return [f"Parameter importances: not computable yet ({e})."]
    rows = [[f"`{name}`", f"{value:.3f}"] for name, value in importances.items()]
    return ["Parameter importances (optuna's fANOVA over the completed trials, seed 0, "
            "summing to 1):", "", markdown_table(["parameter", "importance"], rows)]


def search_comparison(root: Path, runs: list[Run]) -> str | None:
    """The searches below `root` side by side (what pruning saves): per search its pruner,
    trials by state, wall time, best trial, and its best configuration's accuracy at seeds
    0-2 (runs in its `best` folder); then whether pruning earned its place. None without a
    search."""
    journals = find_journals(root)
    if not journals:
        return None
    rows, summary = [], {}
    for journal in journals:
        folder = journal.parent
        study = next(iter(load_studies(journal)), None)
        if study is None:
            continue
        counts = trial_counts(study)
        done = [t for t in search_trials(study) if t.state.name == "COMPLETE"]
        best = max(done, key=lambda t: t.value) if done else None
        inside = [r for r in runs if _below(r.path, folder)]
        trials = [r for r in inside if not _below(r.path, folder / BEST_FOLDER)]
        retrained = [r for r in inside if _below(r.path, folder / BEST_FOLDER)
                     and r.result.get("status") == "completed"]
        wall = union_seconds([s for s in map(run_span, trials) if s])
        # Epochs trained: what pruning saves, whatever else the machine was doing meanwhile.
        epochs = sum(len(r.history) for r in trials)
        val = mean_std([r.epoch_metric("val_acc", True) for r in retrained])
        test = mean_std([r.result.get("test_acc") for r in retrained])
        pruner = _pruner(folder)
        summary[pruner] = (wall, val, epochs)
        seeds = ", ".join(str(r.result.get("seed")) for r in
                          sorted(retrained, key=lambda r: str(r.result.get("seed"))))
        rows.append([f"`{relative(folder, root)}`", pruner, duration(wall) if wall else "—",
                     f"{counts['complete']} / {counts['pruned']}" + (
                         f" ({counts['fail']} failed)" if counts["fail"] else ""),
                     str(epochs),
                     f"{best.value * 100:.2f} % (trial {best.number})" if best else "—",
                     f"{cell(*val[:2], 100, 2)} %" if val[0] is not None else "—",
                     f"{cell(*test[:2], 100, 2)} % (seeds {seeds})" if test[0] is not None
                     else "—"])
    verdict = _pruning_verdict(summary)
    if verdict:
        rows.append(["**pruning**", verdict, "", "", "", "", "", ""])
    return markdown_table(["search", "pruner", "wall time", "trials completed / pruned",
                           "epochs trained",
                           "best trial's validation acc", "best config: validation acc",
                           "best config: test acc"], rows)


def _below(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _pruner(folder: Path) -> str:
    """The search's pruner class, as its recorded config names it."""
    try:
        import yaml

        config = yaml.safe_load((folder / "multirun.yaml").read_text())
        return str(config["hydra"]["sweeper"]["pruner"]["_target_"]).rsplit(".", 1)[-1]
    except Exception:  # no record, another layout: the folder's name will do
        return folder.name


def _pruning_verdict(summary: dict[str, tuple[float, tuple, int]]) -> str:
    """Pruning earns its place where it saves at least a third of the unpruned search's wall
    time and its best configuration's validation accuracy lies within noise of the unpruned
    one's (the two seed-to-seed stds combined)."""
    pruned = next((v for k, v in summary.items() if k != "NopPruner"), None)
    plain = summary.get("NopPruner")
    if pruned is None or plain is None or not plain[0] or pruned[1][0] is None \
            or plain[1][0] is None:
        return ""
    saved = 1 - pruned[0] / plain[0]
    (m1, s1, _), (m2, s2, _) = pruned[1], plain[1]
    fewer = 1 - pruned[2] / plain[2] if plain[2] else 0.0
    gap, noise = (m1 - m2) * 100, math.hypot(s1 or 0.0, s2 or 0.0) * 100
    earns = saved >= 1 / 3 and abs(gap) <= noise
    return (f"Pruning saved {saved * 100:.0f} % of the wall time and {fewer * 100:.0f} % of "
            "the epochs trained; its best configuration's "
            f"validation accuracy is {gap:+.2f} points from the unpruned search's (combined "
            f"seed-to-seed std {noise:.2f}): pruning "
            + ("earns its place (at least a third saved, within noise)." if earns else
               "does not earn its place by the rule (at least a third of the wall time saved "
               "with the best accuracy within noise)."))
