"""experiment=budget: does the best learning rate follow the amount of data, or the number of
optimizer steps a run takes?

The record's cells cross training images with step budgets (trainer.max_steps); in each, the
seed's recipe ran at five learning rates half a decade apart, at several seeds. Per cell the
optimum lr* on a continuous scale (`peak`: a parabola in log10 lr through the best grid value
and its two neighbours), bootstrapped over seeds and validation images; then the two effects
from a plane fitted to log10 lr* over log10 data and log10 steps, each judged by `RULE`; the
tasks record's regret view on these cells; and the cells that repeat the tasks protocol set
beside that record's runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmnist_lab.report.figures import pyplot
from fmnist_lab.report.runs import Run, format_value, load_runs
from fmnist_lab.report.stats import mean_std
from fmnist_lab.report.tables import markdown_table
from fmnist_lab.report.task_runs import Cell, TaskSetting
from fmnist_lab.report.transfer import (
    BOOTSTRAP_SEED,
    DELTA,
    RESAMPLES,
    Regret,
    accuracy_table,
    judge,
    transfer_regret,
)

EXPERIMENT = "budget"
KEY = "optimizer.lr"
MARGIN = 2.0  # the rule's factor: lr* changing by more than this across the grid's span
# The cells the tasks record's protocol (ten epochs at batch 128) also ran, and its tasks.
TASKS_PROTOCOL = {(1_000, 80): "fmnist_1k", (5_000, 400): "fmnist_5k"}

RULE = (
    "**The rule** (fixed before the runs were looked at). In each cell, lr* is the vertex of "
    "the parabola in log10(lr) through the grid value with the best mean validation accuracy "
    "(at the last step, over seeds; a value that diverged or collapsed at any seed is not a "
    "candidate, and scores chance as a neighbour) and its two neighbours; a best value at the "
    "grid's edge is reported as ≤ or ≥ that value, never extrapolated. Its interval comes "
    f"from {RESAMPLES:,} bootstrap resamples of the cell's seeds and validation images (every "
    "learning rate evaluated on the same images, so each resample pairs them), lr* found anew "
    "in each. The two effects come from the least-squares plane log10 lr* = a + b·log10(data) "
    "+ c·log10(steps) over the cells, refitted in every resample (an edge cell enters at the "
    "edge value): the *data effect* is the factor by which lr* changes across the grid's span "
    "of data (b·log10 55), the *step effect* across its span of steps (c·log10 25). An effect "
    f"**moves** when its whole 95 % interval lies beyond a factor of {MARGIN:g} either way, "
    f"**does not move** when its whole interval lies within ×{MARGIN:g} and ÷{MARGIN:g} and no "
    "cell's lr* sits at the grid's edge (an edge value can only understate an effect), "
    "**inconclusive** otherwise.")


@dataclass
class Optimum:
    """A cell's lr*: log10 of the point estimate, the grid edge it sits at (-1, +1; 0
    inside), and the bootstrap draws (log10; an edge draw at the edge value)."""

    data: int
    steps: int
    setting: TaskSetting
    log_lr: float
    edge: int
    draws: np.ndarray
    grid: np.ndarray  # log10 of the learning rates tried

    def bounds(self, level: float = 0.95) -> tuple[float, float]:
        tail = (1 - level) / 2
        return float(np.quantile(self.draws, tail)), float(np.quantile(self.draws, 1 - tail))

    def text(self) -> str:
        """"0.042 [0.021, 0.080]", "≥ 0.3" at the grid's edge."""
        if self.edge:
            return f"{'≤' if self.edge < 0 else '≥'} {format_lr(self.log_lr)}"
        lo, hi = self.bounds()
        return f"{format_lr(self.log_lr)} [{self._bound(lo)}, {self._bound(hi)}]"

    def _bound(self, value: float) -> str:
        at_edge = "≤ " if value <= self.grid[0] else "≥ " if value >= self.grid[-1] else ""
        return at_edge + format_lr(value)


def format_lr(log_lr: float) -> str:
    return f"{10 ** log_lr:.2g}"


def cell_label(data: int, steps: int) -> str:
    return f"{data:,} images, {steps:,} steps"


def budget_cells(runs: list[Run]) -> dict[tuple[int, int], TaskSetting]:
    """(training images, step budget) -> the cell's learning rates, each a `Cell` of its runs
    over seeds (ascending lr), for the runs of experiment=budget."""
    cells: dict[tuple[int, int], dict[float, Cell]] = {}
    for run in runs:
        steps = run.params.get("trainer.max_steps")
        if run.experiment != EXPERIMENT or not isinstance(steps, int) or steps < 1:
            continue
        data = run.result.get("train_images") or run.params.get("data.train_size")
        if data is None:
            continue
        lr = float(run.params[KEY])
        cells.setdefault((int(data), steps), {}).setdefault(lr, Cell(lr)).runs.append(run)
    return {key: TaskSetting(cell_label(*key), KEY, [by_lr[lr] for lr in sorted(by_lr)])
            for key, by_lr in sorted(cells.items())}


def peak(grid: np.ndarray, accuracy: np.ndarray, candidates: list[int]) -> tuple[float, int]:
    """log10 lr* from mean validation accuracies over the log10 `grid`: the vertex of the
    parabola through the best candidate and its two neighbours (inside their span), or the
    edge value and its side (-1, +1) when the best is the first or the last grid value."""
    best = candidates[int(np.argmax(accuracy[candidates]))]
    if best == 0:
        return float(grid[0]), -1
    if best == len(grid) - 1:
        return float(grid[-1]), 1
    x, y = grid[best - 1 : best + 2], accuracy[best - 1 : best + 2]
    curvature, slope, _ = np.polyfit(x, y, 2)
    if curvature >= 0:  # three points on a line or a valley: no peak between them
        return float(grid[best]), 0
    return float(np.clip(-slope / (2 * curvature), x[0], x[2])), 0


def optimum(data: int, steps: int, setting: TaskSetting,
            rng: np.random.Generator) -> Optimum | None:
    """The cell's lr* and its bootstrap draws; None where a learning rate lacks a seed's run
    or its predictions (a record part-way through)."""
    chance = 1 / max(2, setting.cells[0].runs[0].result.get("num_classes") or 10)
    table = accuracy_table(setting, "val", chance)
    if table is None or not table[1]:
        return None
    val, candidates = table
    grid = np.log10([float(c.value) for c in setting.cells])
    n, images = val.shape[1], val.shape[2]
    per_seed = val.mean(axis=2)  # (values x seeds)
    log_lr, edge = peak(grid, per_seed.mean(axis=1), candidates)
    draws = np.empty(RESAMPLES)
    for b in range(RESAMPLES):
        seeds = rng.integers(0, n, n)
        weights = np.bincount(rng.integers(0, images, images), minlength=images) / images
        draws[b] = peak(grid, (val @ weights)[:, seeds].mean(axis=1), candidates)[0]
    return Optimum(data, steps, setting, log_lr, edge, draws, grid)


@dataclass
class Effect:
    """How lr* changes across the grid's span of one factor (log10 of the ratio), with its
    bootstrap draws and verdict."""

    name: str
    span: float
    point: float
    draws: np.ndarray
    verdict: str = "inconclusive"

    def bounds(self, level: float = 0.95) -> tuple[float, float]:
        tail = (1 - level) / 2
        return float(np.quantile(self.draws, tail)), float(np.quantile(self.draws, 1 - tail))

    def text(self) -> str:
        lo, hi = self.bounds()
        return f"×{10 ** self.point:.2g} [×{10 ** lo:.2g}, ×{10 ** hi:.2g}]"


def effects(optima: list[Optimum]) -> tuple[Effect, Effect] | None:
    """The data and step effects from the plane log10 lr* = a + b·log10(data) +
    c·log10(steps), fitted to the point estimates and refitted to every resample; None where
    the cells cannot pin a plane (fewer than two data sizes or budgets)."""
    data = np.log10([o.data for o in optima])
    steps = np.log10([o.steps for o in optima])
    if len(set(data)) < 2 or len(set(steps)) < 2 or len(optima) < 4:
        return None
    design = np.column_stack([np.ones(len(optima)), data, steps])
    solve = np.linalg.pinv(design)
    point = solve @ np.array([o.log_lr for o in optima])
    draws = solve @ np.stack([o.draws for o in optima])  # (3 x resamples)
    spans = (data.max() - data.min(), steps.max() - steps.min())
    found = (Effect("data", spans[0], point[1] * spans[0], draws[1] * spans[0]),
             Effect("steps", spans[1], point[2] * spans[1], draws[2] * spans[1]))
    margin = math.log10(MARGIN)
    censored = any(o.edge for o in optima)
    for effect in found:
        lo, hi = effect.bounds()
        effect.verdict = ("moves" if lo > margin or hi < -margin else
                          "does not move" if -margin < lo and hi < margin and not censored
                          else "inconclusive")
    return found


def contrast(a: Optimum, b: Optimum) -> str:
    """lr* of `b` over lr* of `a` as a factor, with its 95 % interval (independent
    resamples of the two cells); marked where either sits at the grid's edge."""
    diff = b.draws - a.draws
    lo, hi = np.quantile(diff, [0.025, 0.975])
    edge = " (edge)" if a.edge or b.edge else ""
    return f"×{10 ** (b.log_lr - a.log_lr):.2g} [×{10 ** lo:.2g}, ×{10 ** hi:.2g}]{edge}"


# ---------------------------------------------------------------------------- the section


def _grid_table(optima: dict[tuple[int, int], Optimum], fill) -> str:
    data = sorted({d for d, _ in optima})
    steps = sorted({s for _, s in optima})
    rows = [[f"{d:,} images", *(fill(optima[(d, s)]) if (d, s) in optima else "—"
                                for s in steps)] for d in data]
    return markdown_table(["training images", *(f"{s:,} steps" for s in steps)], rows)


def accuracy_table_md(cells: dict[tuple[int, int], TaskSetting]) -> str:
    """Cells down, learning rates across: validation accuracy at the last step, mean ± std
    over seeds (the cell's best in bold), test accuracy below; a value that did not complete
    at every seed says how it failed."""
    lrs = sorted({float(c.value) for s in cells.values() for c in s.cells})
    rows = []
    for (data, steps), setting in cells.items():
        best = setting.best()
        by_lr = {float(c.value): c for c in setting.cells}
        row = [cell_label(data, steps)]
        for lr in lrs:
            cell = by_lr.get(lr)
            if cell is None:
                row.append("—")
            elif not cell.candidate:
                row.append(cell.failure)
            else:
                (vm, vs, n), (tm, ts, _) = cell.stat("val_acc"), cell.stat("test_acc")
                text = _percent(vm, vs)
                row.append(f"{f'**{text}**' if cell is best else text}<br>test "
                           f"{_percent(tm, ts)} (n={n})")
        rows.append(row)
    return markdown_table(["cell", *(format_value(lr) for lr in lrs)], rows)


def _percent(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean * 100:.2f}" + ("" if std is None else f" ± {std * 100:.2f}")


def regret_view(cells: dict[tuple[int, int], TaskSetting],
                rng: np.random.Generator) -> tuple[tuple[int, int], list[Regret]] | None:
    """The tasks rule on these cells: the best grid value of the largest cell (most data,
    longest budget) carried to every other cell, judged as the tasks record judges a task."""
    if not cells:
        return None
    reference = max(cells, key=lambda k: (k[1], k[0]))
    regrets = [r for key, setting in cells.items() if key != reference
               for r in [transfer_regret(setting, cells[reference], rng)] if r is not None]
    judge(regrets)
    return reference, regrets


def protocol_check(cells: dict[tuple[int, int], TaskSetting], tasks_root: Path | None) -> str:
    """The cells that repeat the tasks record's protocol beside that record's runs, at the
    learning rates both have, seed by seed."""
    if tasks_root is None:
        return ("No tasks record was given: `--tasks results/tasks` sets the cells that "
                "repeat its protocol beside its runs.")
    if not tasks_root.is_dir():
        return f"The tasks record {tasks_root} does not exist: nothing to check against."
    tasks_runs = [r for r in load_runs(tasks_root) if r.experiment == "tasks"
                  and r.params.get("data.batch_size") == 128 and r.params.get("init") == "default"
                  and r.params.get("transforms") == "standard"]
    rows, diffs, spreads = [], [], []
    machines: dict[str, set[str]] = {"here": set(), "there": set()}
    for (data, steps), task in TASKS_PROTOCOL.items():
        setting = cells.get((data, steps))
        if setting is None:
            continue
        for cell in setting.cells:
            theirs = {r.result.get("seed"): r for r in tasks_runs
                      if r.params.get("task") == task and float(r.params[KEY]) == cell.value}
            std = mean_std([r.result.get("test_acc") for r in theirs.values()
                            if r.status == "completed"])[1]
            matched = False
            for run in sorted(cell.runs, key=lambda r: r.result.get("seed")):
                twin = theirs.get(run.result.get("seed"))
                if twin is None or run.status != "completed" or twin.status != "completed":
                    continue
                matched = True
                machines["here"].add(_cpu(run))
                machines["there"].add(_cpu(twin))
                ours = (run.epoch_metric("val_acc", True), run.result.get("test_acc"))
                other = (twin.epoch_metric("val_acc", True), twin.result.get("test_acc"))
                diffs.append(abs(ours[1] - other[1]))
                rows.append([cell_label(data, steps), format_value(cell.value),
                             str(run.result.get("seed")), f"{task} ({len(twin.history)} epochs)",
                             f"{ours[0] * 100:.2f} / {other[0] * 100:.2f}",
                             f"{ours[1] * 100:.2f} / {other[1] * 100:.2f}"])
            if matched and std is not None:
                spreads.append(std)
    if not rows:
        return (f"The tasks record {tasks_root} holds no run at this record's learning rates "
                "and seeds in the cells that repeat its protocol.")
    header = ["cell", "lr", "seed", "tasks record's run", "val acc: here / there",
              "test acc: here / there"]
    return (f"The cells that repeat the tasks protocol, beside {tasks_root}'s runs: "
            f"{_agreement(diffs, spreads, machines)}\n\n{markdown_table(header, rows)}")


def _cpu(run: Run) -> str:
    return str((run.result.get("machine") or {}).get("cpu", "an unrecorded CPU"))


def _agreement(diffs: list[float], spreads: list[float], machines: dict[str, set[str]]) -> str:
    """Whether the repeated runs agree: identical, or within the tasks record's seed-to-seed
    spread, and why they can differ at all."""
    if max(diffs) == 0:
        return ("identical at every seed: a step budget of whole epochs trains the same "
                "batches in the same order as the epoch-based run.")
    noise = max(spreads) if spreads else None
    size = (f"they differ by up to {max(diffs) * 100:.2f} points of test accuracy (mean "
            f"{np.mean(diffs) * 100:.2f})")
    verdict = ("" if noise is None else
               f", {'within' if max(diffs) <= noise else 'beyond'} the noise: the tasks "
               f"record's seed-to-seed std of test accuracy in these cells is up to "
               f"{noise * 100:.2f} points")
    why = ""
    if machines["here"] != machines["there"]:
        why = (f". Why they differ at all: the tasks record ran on "
               f"{_and(sorted(machines['there']))}, this record on "
               f"{_and(sorted(machines['here']))}. The batches and their order are the same, "
               "but another CPU's floating-point kernels differ in the last bits, and training "
               "amplifies that; on one machine the two are identical to the last bit "
               "(tests/test_step_budget.py)")
    return f"{size}{verdict}{why}."


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def plot_accuracy(optima: dict[tuple[int, int], Optimum],
                  cells: dict[tuple[int, int], TaskSetting], path: Path) -> Path:
    """One panel per data size: mean validation accuracy against the learning rate, a line
    per step budget (± std over seeds), lr* marked where it lies inside the grid."""
    plt = pyplot()
    sizes = sorted({d for d, _ in cells})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), sharey=True,
                             layout="constrained", squeeze=False)
    budgets = sorted({s for _, s in cells})
    for ax, data in zip(axes[0], sizes, strict=True):
        for i, steps in enumerate(budgets):
            setting = cells.get((data, steps))
            if setting is None:
                continue
            points = [(float(c.value), *c.stat("val_acc")[:2]) for c in setting.cells]
            points = [(x, m * 100, (s or 0) * 100) for x, m, s in points if m is not None]
            if not points:
                continue
            x, m, s = map(np.array, zip(*points, strict=True))
            line = ax.errorbar(x, m, yerr=s, marker="o", capsize=3, color=f"C{i}",
                               label=f"{steps:,} steps")
            best = optima.get((data, steps))
            if best is not None and not best.edge:
                ax.axvline(10 ** best.log_lr, color=line[0].get_color(), ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (dotted: lr*)")
        ax.set_title(f"{data:,} training images")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy at the last step (%)")
    axes[0][-1].legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_optimum(optima: dict[tuple[int, int], Optimum], path: Path) -> Path:
    """lr* over data × steps: a heatmap of log10 lr*, each cell annotated."""
    plt = pyplot()
    sizes = sorted({d for d, _ in optima})
    budgets = sorted({s for _, s in optima})
    grid = np.full((len(sizes), len(budgets)), np.nan)
    fig, ax = plt.subplots(figsize=(2.2 * len(budgets) + 2.5, 1.1 * len(sizes) + 1.5),
                           layout="constrained")
    for (data, steps), o in optima.items():
        y, x = sizes.index(data), budgets.index(steps)
        grid[y, x] = o.log_lr
        ax.text(x, y, o.text().replace(" [", "\n["), ha="center", va="center", fontsize=8)
    image = ax.imshow(grid, cmap="coolwarm", aspect="auto")
    ax.set_xticks(range(len(budgets)), [f"{s:,} steps" for s in budgets])
    ax.set_yticks(range(len(sizes)), [f"{d:,} images" for d in sizes])
    fig.colorbar(image, ax=ax, label="log10 lr*")
    ax.set_title("The best learning rate lr* [95 % interval] by data and step budget")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def budget_optima(runs: list[Run]) -> tuple[dict, dict, tuple[Effect, Effect] | None]:
    """(cells, optima, effects) of the budget runs among `runs`: what the section and the
    front page's table are made of. One generator, so both give the same numbers."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    cells = budget_cells(runs)
    # A cell is estimated once it has run every learning rate of the record's grid: a
    # parabola through a gap would span other neighbours than the others' do.
    grid = {float(c.value) for setting in cells.values() for c in setting.cells}
    optima = {key: o for key, setting in cells.items()
              if {float(c.value) for c in setting.cells} == grid
              for o in [optimum(*key, setting, rng)] if o is not None}
    return cells, optima, effects(list(optima.values()))


def budget_answer(runs: list[Run]) -> str | None:
    """The front page's table: lr* per cell, then the two effects with their verdicts."""
    _, optima, found = budget_optima(runs)
    if not optima:
        return None
    table = _grid_table(optima, Optimum.text)
    if found is None:
        return table
    rows = [[f"**{e.name} effect** (across {10 ** e.span:.0f}×)", e.text(), e.verdict]
            for e in found]
    return table + "\n\n" + markdown_table(["effect on lr*", "factor [95 % interval]",
                                            "verdict"], rows)


def budget_section(runs: list[Run], root: Path, tasks_root: Path | None = None
                   ) -> tuple[list[str], list[Path]]:
    """The report's section on experiment=budget; ([], []) when no run belongs to it."""
    cells, optima, found = budget_optima(runs)
    if not cells:
        return [], []
    seeds = sorted({r.result.get("seed") for s in cells.values() for c in s.cells
                    for r in c.runs}, key=str)
    figures = [plot_accuracy(optima, cells, root / "budget_accuracy.png")]
    md = ["## Data or steps? The best learning rate by training images and step budget", "",
          f"{len(cells)} cells ({len({d for d, _ in cells})} data sizes × "
          f"{len({s for _, s in cells})} step budgets); seeds {', '.join(map(str, seeds))}. "
          "Every run is the seed's recipe on two_conv_one_fc (SGD momentum 0.9, batch 128, "
          "default init, standard transforms) for exactly its budget of optimizer steps, "
          "validated at ten evenly spaced steps; accuracies in %, at the last step, mean ± std "
          "over seeds.", "", RULE, ""]
    if optima:
        figures.append(plot_optimum(optima, root / "budget_optimum.png"))
        md += ["### lr* by data and step budget", "",
               "lr* [95 % bootstrap interval]; ≤/≥: the best grid value sits at the grid's "
               "edge:", "", _grid_table(optima, Optimum.text), "",
               f"![lr* by data and step budget]({figures[-1].name})", ""]
    if found is not None:
        rows = [[f"{e.name} ({10 ** e.span:.0f}× across the grid)", e.text(),
                 f"**{e.verdict}**"] for e in found]
        md += ["### The two effects", "",
               "The factor by which lr* changes across the grid's span of each, from the "
               "plane fitted to log10 lr*; the margin is ×"
               f"{MARGIN:g} either way:", "",
               markdown_table(["effect", "factor [95 % interval]", "verdict"], rows), "",
               *_contrast_lines(optima), ""]
    regrets = regret_view(cells, np.random.default_rng(BOOTSTRAP_SEED))
    if regrets and regrets[1]:
        reference, found_regrets = regrets
        md += ["### The tasks rule on these cells", "",
               f"The regret of carrying the best grid value of {cell_label(*reference)} to "
               f"each other cell (test accuracy of the cell's own best value minus the carried "
               f"one's, points, mean ± std over seeds [95 % interval]; δ = {DELTA * 100:.1f} "
               "points, Holm over the cells), as the tasks record judges a task:", "",
               _regret_table(found_regrets, cells, reference), ""]
    md += ["### The cells that repeat the tasks protocol", "", protocol_check(cells, tasks_root),
           "", "### Validation accuracy by learning rate", "", accuracy_table_md(cells), "",
           f"![Validation accuracy against learning rate]({figures[0].name})", ""]
    return md, figures


def _contrast_lines(optima: dict[tuple[int, int], Optimum]) -> list[str]:
    """The effects cell by cell: across the data at each budget, across the budgets at each
    data size (the plane assumes they add up in log space; these show whether they do)."""
    sizes = sorted({d for d, _ in optima})
    budgets = sorted({s for _, s in optima})
    lines = []
    for steps in budgets:
        if (sizes[0], steps) in optima and (sizes[-1], steps) in optima:
            lines.append(f"- at {steps:,} steps, {sizes[0]:,} → {sizes[-1]:,} images: lr* "
                         f"{contrast(optima[(sizes[0], steps)], optima[(sizes[-1], steps)])}")
    for data in sizes:
        if (data, budgets[0]) in optima and (data, budgets[-1]) in optima:
            lines.append(f"- at {data:,} images, {budgets[0]:,} → {budgets[-1]:,} steps: lr* "
                         f"{contrast(optima[(data, budgets[0])], optima[(data, budgets[-1])])}")
    return ["Cell by cell (factor [95 % interval]):", "", *lines] if lines else []


def _regret_table(regrets: list[Regret], cells: dict[tuple[int, int], TaskSetting],
                  reference: tuple[int, int]) -> str:
    by = {r.task: r for r in regrets}
    sizes = sorted({d for d, _ in cells})
    budgets = sorted({s for _, s in cells})
    rows = []
    for data in sizes:
        row = [f"{data:,} images"]
        for steps in budgets:
            r = by.get(cell_label(data, steps))
            if r is None:
                row.append("reference" if (data, steps) == reference else "—")
                continue
            row.append(f"`{format_value(r.own_best)}` {r.text()}")
        rows.append(row)
    return markdown_table(["training images", *(f"{s:,} steps" for s in budgets)], rows)
