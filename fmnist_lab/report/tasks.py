"""experiment=tasks: the seed's hypothesis, tested. Does the best value of a setting move
between tasks by more than the noise, and what does carrying fmnist_55k's best value to
another task cost?

Per setting (learning rate, batch size, initialisation, augmentation): a table of values by
task (mean ± std validation accuracy, test accuracy beside), a heatmap relative to each task's
best, the rank agreement with fmnist_55k, and per task the transfer regret with a verdict
(moves, stays, inconclusive) by the rule `RULE` states. The control (experiment=tasks_control,
fmnist_1k at other seeds) is judged against fmnist_1k by the same rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fmnist_lab.report.figures import pyplot
from fmnist_lab.report.runs import Run, format_value, load_runs, value_key
from fmnist_lab.report.stats import spearman
from fmnist_lab.report.tables import markdown_table
from fmnist_lab.report.task_runs import (
    CONTROL,
    CONTROL_REFERENCE,
    REFERENCE,
    SETTINGS,
    Cell,
    TaskSetting,
    baseline_values,
    group_tasks,
    optimizer_steps,
    run_length,
    task_of,
)
from fmnist_lab.report.transfer import (
    BOOTSTRAP_SEED,
    RULE,
    Regret,
    judge,
    transfer_regret,
)
from fmnist_lab.report.tunability import (
    all_tunability,
    definition,
    tunability_lines,
    tunability_summary,
    tunability_table,
)


def all_regrets(grouped: dict[str, dict[str, TaskSetting]]
                ) -> tuple[list[Regret], list[Regret]]:
    """(the tasks' regrets against fmnist_55k, the control's against fmnist_1k), judged."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    main, control = [], []
    for task, settings in grouped.items():
        reference = CONTROL_REFERENCE if task == CONTROL else REFERENCE
        if task == REFERENCE or reference not in grouped:
            continue
        for key, setting in settings.items():
            regret = transfer_regret(setting, grouped[reference][key], rng)
            if regret is not None:
                (control if task == CONTROL else main).append(regret)
    judge(main)
    judge(control)
    return main, control


# ---------------------------------------------------------------------------- the section


def _label(task: str) -> str:
    return "fmnist_1k, seeds 3-5 (control)" if task == CONTROL else task


def _points(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:+.2f}"


def setting_table(grouped: dict[str, dict[str, TaskSetting]], key: str) -> str:
    """Tasks down, values across: validation accuracy mean ± std over seeds (the task's
    best in bold, values within noise of it marked ≈), test accuracy below."""
    values: list[Any] = []
    for settings in grouped.values():
        for cell in settings[key].cells:
            if value_key(cell.value) not in map(value_key, values):
                values.append(cell.value)
    rows = []
    for task, settings in grouped.items():
        setting = settings[key]
        best = setting.best()
        cells = {value_key(c.value): c for c in setting.cells}
        row = [_label(task)]
        for value in values:
            cell = cells.get(value_key(value))
            if cell is None:
                row.append("—")
                continue
            if not cell.candidate:
                row.append(cell.failure)
                continue
            (vm, vs, _), (tm, ts, _) = cell.stat("val_acc"), cell.stat("test_acc")
            text = _mean_std(vm, vs)
            text = f"**{text}**" if cell is best else (f"{text} ≈" if
                                                         setting.within_noise(cell) else text)
            row.append(f"{text}<br>test {_mean_std(tm, ts)}")
        rows.append(row)
    return markdown_table([f"{SETTINGS[key]} ({key})", *map(format_value, values)], rows)


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean * 100:.2f}" + ("" if std is None else f" ± {std * 100:.2f}")


def rank_agreement(grouped: dict[str, dict[str, TaskSetting]]) -> str:
    """Spearman's ρ between each task's ranking of a setting's values (mean validation
    accuracy; a value that diverged ranks last) and fmnist_55k's."""
    if REFERENCE not in grouped:
        return ""
    rows = []
    for task, settings in grouped.items():
        if task == REFERENCE:
            continue
        row = [_label(task)]
        for key in SETTINGS:
            ref = {value_key(c.value): _rank_score(c) for c in grouped[REFERENCE][key].cells}
            own = {value_key(c.value): _rank_score(c) for c in settings[key].cells}
            shared = [v for v in ref if v in own]
            rho = spearman([ref[v] for v in shared], [own[v] for v in shared]) \
                if len(shared) >= 3 else None
            row.append("—" if rho is None else f"{rho:.2f}")
        rows.append(row)
    return markdown_table(["task", *(f"{name}" for name in SETTINGS.values())], rows)


def _rank_score(cell: Cell) -> float:
    mean = cell.stat("val_acc")[0] if cell.candidate else None
    return -1.0 if mean is None else mean


def regret_table(regrets: list[Regret], tasks: list[str]) -> str:
    """Settings down, tasks across: regret in points, mean ± std over seeds, the 95 %
    bootstrap interval and the verdict; then the line over all tasks."""
    by = {(r.task, r.key): r for r in regrets}
    rows = []
    for key, name in SETTINGS.items():
        row = [name]
        for task in tasks:
            r = by.get((task, key))
            if r is None:
                row.append("—")
                continue
            row.append(r.text())
        rows.append(row)
    return markdown_table(["setting", *map(_label, tasks)], rows)


def verdict_lines(regrets: list[Regret]) -> list[str]:
    """One line per setting over all tasks."""
    lines = []
    for key, name in SETTINGS.items():
        mine = [r for r in regrets if r.key == key]
        if not mine:
            continue
        counts = {v: [r.task for r in mine if r.verdict == v]
                  for v in ("moves", "stays", "inconclusive")}
        parts = [f"{v} on {len(ts)} ({', '.join(ts)})" for v, ts in counts.items() if ts]
        moved = [r for r in mine if r.verdict == "moves"]
        worst = max(mine, key=lambda r: r.mean)
        lines.append(
            f"- **{name}**: {'the best value moves' if moved else 'no move beyond the noise'}"
            f" — {'; '.join(parts)} of {len(mine)} tasks; the largest regret "
            f"{worst.mean * 100:+.2f} points on {worst.task} (its best "
            f"`{format_value(worst.own_best)}`, fmnist_55k's `"
            f"{format_value(worst.reference_best)}`).")
    return lines


def verdict_summary(grouped: dict[str, dict[str, TaskSetting]], regrets: list[Regret]) -> str:
    """The headline table: per setting, fmnist_55k's best value, each task's best value and
    verdict, and the count over tasks (what the README shows)."""
    tasks = [t for t in grouped if t not in (REFERENCE, CONTROL)]
    by = {(r.task, r.key): r for r in regrets}
    rows = []
    for key, name in SETTINGS.items():
        ref = grouped.get(REFERENCE, {}).get(key)
        ref_best = ref.best() if ref else None
        row = [name, f"`{format_value(ref_best.value)}`" if ref_best else "—"]
        for task in tasks:
            r = by.get((task, key))
            row.append("—" if r is None else
                       f"`{format_value(r.own_best)}` {_points(r.mean)} {r.verdict}")
        verdicts = [by[(t, key)].verdict for t in tasks if (t, key) in by]
        row.append(", ".join(f"{verdicts.count(v)} {v}" for v in
                             ("moves", "stays", "inconclusive") if verdicts.count(v)))
        rows.append(row)
    return markdown_table(["setting", "fmnist_55k's best", *tasks, "over the tasks"], rows)


def plot_heatmaps(grouped: dict[str, dict[str, TaskSetting]], path: Path) -> Path:
    """One panel per setting: tasks down, values across, coloured by mean validation accuracy
    minus the task's best (points; ≤ -10 saturates), so tasks at 99 % and 70 % share one
    scale; the best cell outlined, diverged cells grey."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    tasks = list(grouped)
    fig, axes = plt.subplots(2, 2, figsize=(15, 0.55 * len(tasks) * 2 + 3), layout="constrained")
    image = None
    for ax, (key, name) in zip(axes.flat, SETTINGS.items(), strict=True):
        values: list[Any] = []
        for settings in grouped.values():
            for cell in settings[key].cells:
                if value_key(cell.value) not in map(value_key, values):
                    values.append(cell.value)
        gap = np.full((len(tasks), len(values)), np.nan)
        for y, task in enumerate(tasks):
            setting = grouped[task][key]
            best = setting.best()
            best_mean = best.stat("val_acc")[0] if best else None
            for cell in setting.cells:
                x = list(map(value_key, values)).index(value_key(cell.value))
                mean = cell.stat("val_acc")[0]
                if cell.candidate and mean is not None and best_mean is not None:
                    gap[y, x] = (mean - best_mean) * 100
                    ax.text(x, y, f"{gap[y, x]:.1f}" if cell is not best else
                            f"{best_mean * 100:.1f}", ha="center", va="center", fontsize=8,
                            color="white" if gap[y, x] < -6 else "black")
                else:
                    ax.text(x, y, cell.failure.replace("diverged", "div.").replace(
                        "collapsed", "coll."), ha="center", va="center", fontsize=8)
                if cell is best:
                    ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False,
                                           edgecolor="red", lw=2))
        image = ax.imshow(np.ma.masked_invalid(gap), cmap="viridis", vmin=-10, vmax=0,
                          aspect="auto")
        ax.set_facecolor("0.85")
        ax.set_xticks(range(len(values)), [format_value(v) for v in values], fontsize=8)
        ax.set_yticks(range(len(tasks)), [_label(t) for t in tasks], fontsize=8)
        ax.set_title(f"{name} ({key})")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6,
                     label="mean validation accuracy minus the task's best (points); "
                           "the best cell shows its accuracy")
    fig.suptitle("The seed's hypothesis: each task's best value (outlined) and how far the "
                 "others fall behind it (mean over seeds)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def batch_size_line(grouped: dict[str, dict[str, TaskSetting]]) -> str:
    """Smith & Le (2018): at a fixed learning rate, the best batch size grows in proportion
    to the training-set size. What the 1k, 5k and 55k tasks show."""
    points = []
    for task, size in (("fmnist_1k", 1000), ("fmnist_5k", 5000), ("fmnist_55k", 55000)):
        setting = grouped.get(task, {}).get("data.batch_size")
        best = setting.best() if setting else None
        if best is not None:
            points.append((size, best.value))
    if len(points) < 2:
        return ""
    x = np.log([p[0] for p in points])
    y = np.log([float(p[1]) for p in points])
    slope = float(np.polyfit(x, y, 1)[0])
    listing = ", ".join(f"{n:,} images → {format_value(b)}" for n, b in points)
    return (f"**Check against theory.** Smith & Le (2018) predict that at a fixed learning "
            f"rate the best batch size grows in proportion to the training-set size (slope near "
            f"1 on log-log axes). Best batch size by validation: {listing}; log-log slope "
            f"{slope:.2f}. The sweep's batch sizes span 8× (64-512) where the data sizes span "
            f"55×, so a slope of 1 could not show in full; the direction is what this can "
            f"test.")


def protocol_line(grouped: dict[str, dict[str, TaskSetting]]) -> str:
    """What every task ran, read off the runs: the network, the optimizer, the length (epochs
    or a step budget) and the baseline values of the four settings."""
    runs = [r for settings in grouped.values() for c in settings["optimizer.lr"].cells
            for r in c.runs]
    if not runs:
        return ""
    models = sorted({str(r.params.get("model")) for r in runs})
    optimizers = sorted({_optimizer(r) for r in runs})
    lengths: dict[str, list[str]] = {}
    for task, settings in grouped.items():
        for length in sorted({run_length(r) for c in settings["optimizer.lr"].cells
                              for r in c.runs}):
            lengths.setdefault(length, []).append(_label(task))
    length = next(iter(lengths)) if len(lengths) == 1 else "; ".join(
        f"{n} on {', '.join(tasks)}" for n, tasks in lengths.items())
    base = baseline_values(next(iter(grouped.values()))["optimizer.lr"].cells[0].runs)
    return (f"Each task ran the seed's four one-at-a-time sweeps on {', '.join(models)} "
            f"({', '.join(optimizers)}, {length}; the others at lr "
            f"{format_value(base['optimizer.lr'])}, batch {format_value(base['data.batch_size'])}"
            f", {base['init']} init, {base['transforms']} transforms).")


def _optimizer(run: Run) -> str:
    name = str(run.params.get("optimizer", "sgd"))
    if name == "sgd":
        return f"SGD momentum {format_value(run.params.get('optimizer.momentum'))}"
    return name


def step_budgets(grouped: dict[str, dict[str, TaskSetting]]) -> str:
    """"4,300 steps on fmnist_55k, 400 on fmnist_5k and fmnist_5k_noisy, ...": each task's
    optimizer steps at the baseline batch size, read off its runs."""
    by_steps: dict[int, list[str]] = {}
    for task, settings in grouped.items():
        if task == CONTROL:
            continue
        steps = {optimizer_steps(r) for c in settings["optimizer.lr"].cells for r in c.runs}
        for n in sorted(steps - {None}):
            by_steps.setdefault(n, []).append(_label(task))
    parts = [f"{n:,}{' steps' if i == 0 else ''} on {_and(tasks)}"
             for i, (n, tasks) in enumerate(sorted(by_steps.items(), reverse=True))]
    return ", ".join(parts)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def confounders(grouped: dict[str, dict[str, TaskSetting]]) -> str:
    """What differs between the tasks besides the task, from their runs' configs."""
    runs = [r for settings in grouped.values() for c in settings["optimizer.lr"].cells
            for r in c.runs]
    models = ", ".join(sorted({str(r.params.get("model")) for r in runs}))
    lengths = sorted({run_length(r) for r in runs})
    length = lengths[0] if len(lengths) == 1 else " or ".join(lengths)
    batch = baseline_values(runs)["data.batch_size"] if runs else None
    return (
        "**Confounders.** Every task ran the same protocol, so what differs besides the task "
        f"is named here. *Step budget*: {length} over fewer images are fewer optimizer steps "
        f"(batch {format_value(batch)}: {step_budgets(grouped)}); a value that needs more steps "
        "(a small learning rate, a large batch) loses more on a small task for that reason "
        "alone, and that is part of what 'less data' means under this protocol (the budget "
        "record, experiment=budget, takes the two apart). Tasks with the same budget compare "
        f"with each other as well as with {REFERENCE}. *One network* ({models}) and *{length}*"
        ": another network or a longer run may move the optima differently. *Three seeds*: a "
        "regret smaller than δ cannot be told from zero, and noisier tasks (fewer validation "
        "or test images, such as digits' 359 test images) give wider intervals, so more of "
        "their verdicts are inconclusive. *Last-epoch numbers*, as the seed reported them: a "
        "value that over-fits late is judged on its last epoch, not its best.")


def missing_reference(grouped: dict[str, dict[str, TaskSetting]], root: Path) -> str:
    """Why a tasks sweep without fmnist_55k's runs has no verdicts, and how to give them."""
    return (f"**No verdicts yet**: every regret carries {REFERENCE}'s best value to a task, "
            f"and {REFERENCE}'s runs are not below {root}. Judge against the committed "
            f"record's: `python -m fmnist_lab.report {root} --tasks results/tasks`; or train "
            f"them into this folder with the same settings as these runs (`python -m "
            f"fmnist_lab.train experiment=tasks task={REFERENCE} ...`).")


def reference_note(grouped: dict[str, dict[str, TaskSetting]], tasks_root: Path) -> str:
    """Where the reference's runs came from, and whether they ran the tasks' protocol."""
    ref = {run_length(r) for c in grouped[REFERENCE]["optimizer.lr"].cells for r in c.runs}
    own = {run_length(r) for t, settings in grouped.items() if t != REFERENCE
           for c in settings["optimizer.lr"].cells for r in c.runs}
    note = f"{REFERENCE}'s runs, the reference of every regret, are {tasks_root}'s."
    if ref != own:
        note += (f" They ran {_and(sorted(ref))} where these tasks ran {_and(sorted(own))}: a "
                 "regret here mixes the task with the training length; rerun the tasks with "
                 "the reference's length to judge the task alone.")
    return note


def tasks_tunability(runs: list[Run]) -> str | None:
    """The front page's tunability table of the tasks runs among `runs`; None without them."""
    grouped = group_tasks(runs)
    if REFERENCE not in grouped:
        return None
    return tunability_summary(all_tunability(grouped), all_regrets(grouped)[0])


def tasks_verdicts(runs: list[Run]) -> str | None:
    """The verdict table (`verdict_summary`) of the tasks runs among `runs`; None without
    them. What the front page shows, regenerated by `report DIR --readme README.md`."""
    grouped = group_tasks(runs)
    if REFERENCE not in grouped:
        return None
    return verdict_summary(grouped, all_regrets(grouped)[0])


def tasks_section(runs: list[Run], root: Path, tasks_root: Path | None = None
                  ) -> tuple[list[str], list[Path]]:
    """The report's section on experiment=tasks; ([], []) when no run belongs to it. Where
    fmnist_55k's runs are not among `runs`, they are read from `tasks_root` (a record)."""
    grouped = group_tasks(runs)
    if not grouped:
        return [], []
    borrowed = REFERENCE not in grouped and tasks_root is not None and tasks_root.is_dir()
    if borrowed:
        grouped = group_tasks(runs + [r for r in load_runs(tasks_root)
                                      if task_of(r) == REFERENCE])
        borrowed = REFERENCE in grouped
    regrets, control = all_regrets(grouped)
    heatmap = plot_heatmaps(grouped, root / "tasks_heatmaps.png")
    tasks = [t for t in grouped if t not in (REFERENCE, CONTROL)]
    seeds = sorted({r.result.get("seed") for t in grouped.values() for s in t.values()
                    for c in s.cells for r in c.runs}, key=str)
    md = ["## The seed's hypothesis, tested: the same sweeps on several tasks", "",
          f"{len(grouped)} tasks ({', '.join(map(_label, grouped))}); seeds "
          f"{', '.join(map(str, seeds))}. {protocol_line(grouped)} Accuracies in %, last "
          "epoch, mean ± std over seeds.", "", RULE, ""]
    if REFERENCE not in grouped:
        md += [missing_reference(grouped, root), ""]
    elif borrowed:
        md += [reference_note(grouped, tasks_root), ""]
    md += ["### Verdicts", "", verdict_summary(grouped, regrets), "",
          *verdict_lines(regrets), "",
          "Transfer regret in points (test accuracy of the task's own best value minus "
          "fmnist_55k's best carried over), mean ± std over seeds, [95 % bootstrap "
          "interval], verdict:", "", regret_table(regrets, tasks), ""]
    if control:
        md += ["**The control**: fmnist_1k at seeds 3-5 judged against fmnist_1k at seeds 0-2 "
               "by the same rule (Holm over its four verdicts), where nothing can move: "
               + "; ".join(f"{SETTINGS[r.key]} {_points(r.mean)} points, {r.verdict}"
                           for r in control) + ". "
               + ("No verdict says 'moves': the rule did not see movement in noise."
                  if all(r.verdict != "moves" for r in control) else
                  "A verdict says 'moves' on noise alone: the rule is too loose."), ""]
    md += [f"![Each task's best value and how far the others fall behind]({heatmap.name})", ""]
    tunings = all_tunability(grouped)
    if tunings:
        judged = [t for t in grouped if t != CONTROL]
        md += ["### Tunability", "", definition(tunings, judged), "",
               "Tunability in points per task (the task's best value against the shared "
               "default), the mean over tasks, and the regrets beside it:", "",
               tunability_table(tunings, regrets, judged), "",
               *tunability_lines(tunings), ""]
    md += ["### Rank agreement with fmnist_55k", "",
           "Spearman's ρ between the task's ranking of a setting's values and fmnist_55k's "
           "(1: the same order; a diverged value ranks last):", "", rank_agreement(grouped), ""]
    line = batch_size_line(grouped)
    if line:
        md += [line, ""]
    md += [confounders(grouped), ""]
    for key, name in SETTINGS.items():
        md += [f"### {name.capitalize()} on every task", "",
               "Validation accuracy (best in bold, ≈ within noise of it: behind by no more "
               "than the combined seed-to-seed std), test accuracy below:", "",
               setting_table(grouped, key), ""]
    return md, [heatmap]
