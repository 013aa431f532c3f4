"""hparams_search=optuna: the search's trials, optuna's parameter importances, a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fmnist_lab.report.figures import file_name, pyplot
from fmnist_lab.report.runs import format_value, relative
from fmnist_lab.report.tables import markdown_table

OPTUNA_DB = "optuna.db"  # where hparams_search=optuna keeps its study (the sweep folder)


def optuna_sections(root: Path) -> tuple[list[str], list[Path]]:
    """For every optuna study below `root`: its trials, optuna's own parameter importances
    (mean decrease in impurity) and a parallel-coordinates figure. optuna is imported only
    here, where a search left its study: it is an optional extra (and imports no torch)."""
    databases = sorted(root.rglob(OPTUNA_DB))
    if not databases:
        return [], []
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    md: list[str] = []
    figures: list[Path] = []
    for db in databases:
        # As the search opened it (hydra_plugins/fmnist_lab_optuna): optuna 2.x under
        # SQLAlchemy 2 needs autocommit.
        storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}",
                                             engine_kwargs={"isolation_level": "AUTOCOMMIT"})
        prefix = "" if db.parent == root else file_name(relative(db.parent, root)) + "_"
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            done = [t for t in study.trials if t.state.name == "COMPLETE"]
            md += [f"## optuna search: `{study.study_name}` ({relative(db, root)})", "",
                   f"{len(study.trials)} trials, {len(done)} completed."]
            if not done:
                md += [""]
                continue
            best = study.best_trial
            params = ", ".join(f"{k}={format_value(v)}" for k, v in best.params.items())
            md += [f"Best last-epoch validation accuracy {best.value * 100:.2f} % in trial "
                   f"{best.number}: {params}.", "", *_importance_lines(study), ""]
            path = root / f"{prefix}optuna_parallel_coordinates.png"
            plot_parallel_coordinates(done, path)
            figures.append(path)
            md += [f"![optuna: trials in parallel coordinates]({path.name})", ""]
    return md, figures


def plot_parallel_coordinates(trials: list[Any], path: Path) -> Path:
    """One line per completed trial through its parameters, coloured by its objective.
    (optuna 2.x's own plot_parallel_coordinate fails with current matplotlib.) Numbers on a
    log axis where optuna sampled them so, choices spread evenly in the order seen."""
    plt = pyplot()

    names = sorted({k for t in trials for k in t.params})
    columns, ticks = [], []
    for name in names:
        values = [t.params.get(name) for t in trials]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            log = getattr(trials[0].distributions.get(name), "log", False)
            x = np.log10(values) if log else np.asarray(values, dtype=float)
            span = x.max() - x.min() or 1.0
            columns.append((x - x.min()) / span)
            ticks.append(f"{name}\n{format_value(min(values))} … {format_value(max(values))}")
        else:
            order = list(dict.fromkeys(map(str, values)))
            columns.append(np.array([order.index(str(v)) for v in values]) / max(1, len(order) - 1))
            ticks.append(f"{name}\n{' / '.join(order)}")
    objective = np.array([t.value for t in trials]) * 100
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(names)), 5), layout="constrained")
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    norm = Normalize(objective.min(), objective.max())
    cmap = plt.get_cmap("viridis")
    for i in np.argsort(objective):  # the best drawn last, on top
        ax.plot(range(len(names)), [c[i] for c in columns], color=cmap(norm(objective[i])),
                marker="o", alpha=0.8)
    ax.set_xticks(range(len(names)), ticks, fontsize=8)
    ax.set_yticks([0, 1], ["low", "high"])
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                 label="last-epoch validation accuracy (%)")
    ax.set_title(f"optuna: {len(trials)} completed trials")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _importance_lines(study: Any) -> list[str]:
    import optuna

    # Mean decrease in impurity of a random forest: optuna 2.x's default, fANOVA, breaks
    # on numpy 2 (ragged arrays).
    evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
    try:
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except ImportError:
        return ["Parameter importances: optuna's evaluator needs scikit-learn "
                "(`pip install scikit-learn`)."]
    except (RuntimeError, ValueError) as e:  # too few trials, a single value
        return [f"Parameter importances: not computable yet ({e})."]
    rows = [[f"`{name}`", f"{value:.3f}"] for name, value in importances.items()]
    return ["Parameter importances (optuna's mean-decrease-in-impurity evaluator, summing "
            "to 1):", "", markdown_table(["parameter", "importance"], rows)]
