"""`python -m fmnist_lab.report DIR`: read the runs; write every section, the CSV, the figures."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from fmnist_lab.report.budget import EXPERIMENT as BUDGET_EXPERIMENT
from fmnist_lab.report.budget import budget_section
from fmnist_lab.report.cross_validation import cross_validation_section
from fmnist_lab.report.docs import update_readme
from fmnist_lab.report.figures import file_name, plot_losses
from fmnist_lab.report.interaction import interaction_section, is_interaction, plot_interaction
from fmnist_lab.report.representation import compare_sections
from fmnist_lab.report.runs import ReportError, Sweep, group_sweeps, load_runs
from fmnist_lab.report.search import optuna_sections
from fmnist_lab.report.tables import (
    best_line,
    failed_lines,
    held_fixed_line,
    shared_lines,
    summary_line,
    sweep_table,
    write_csv,
)
from fmnist_lab.report.task_runs import EXPERIMENTS as TASK_EXPERIMENTS
from fmnist_lab.report.tasks import tasks_section
from fmnist_lab.report.timing import time_section
from fmnist_lab.results import RESULTS_FILE


@dataclass
class Report:
    """What `write_report` wrote, and one summary line per experiment."""

    markdown: Path
    csv: Path
    figures: list[Path]
    summary: list[str]




def sweep_section(sweep: Sweep, root: Path, figure: Path,
                  trained_in: dict[Path, str]) -> list[str]:
    """One experiment's part of report.md: heading, table, verdict, shared runs, failures,
    figure. `trained_in` maps a run folder to the experiment that trained it."""
    md = [f"## {sweep.name}: {', '.join(sweep.keys) or 'single configuration'}", "",
          held_fixed_line(sweep), ""]
    if sweep.is_cross_validation:
        md += [cross_validation_section(sweep), ""]
    else:
        md += [sweep_table(sweep), "", best_line(sweep), ""]
    return md + [*shared_lines(sweep, root, trained_in), *failed_lines(sweep, root), "",
                 f"![{sweep.name}: loss against epoch]({figure.name})", ""]


def write_report(root: Path, log_y: bool = False, tasks_root: Path | None = None) -> Report:
    """Read every run below `root`; write report.md, results.csv and the figures into it.
    `tasks_root`: a tasks record, fmnist_55k's runs for tasks runs without them and what the
    budget runs' repeated cells are checked against."""
    if not root.exists():
        raise ReportError(f"{root} does not exist")
    if not root.is_dir():
        raise ReportError(f"{root} is not a folder (give the sweep or study folder)")
    runs = load_runs(root)
    if not runs:
        raise ReportError(f"no {RESULTS_FILE} below {root} (run a sweep first: "
                          "python -m fmnist_lab.train -m experiment=NAME)")
    sweeps = group_sweeps(runs, root)
    # The sweep that trained a run (a search's, by its folder), named as its section is.
    trained_in = {r.path.resolve(): r.experiment for r in runs}
    trained_in |= {r.path.resolve(): sweep.name for sweep in sweeps for r in sweep.runs}
    trained = sum(1 for r in runs if not r.result.get("reused_from"))
    # No date and no absolute path: the same runs give the same report, byte for byte.
    md = ["# fmnist-lab report", "",
          f"{len(runs)} runs, {trained} of them trained ({len(runs) - trained} reuse a run of "
          "the same config and seed from another experiment). Cells are mean ± "
          "sample std (ddof=1) over the n seeds that completed (a single number when n=1); "
          "accuracies in %; `ep 1` is the first epoch and `ep N` the last; seconds is the mean "
          "run time. Every run is listed in `results.csv`.", ""]
    figures, summary = [], []
    tasks_md, tasks_figures = tasks_section(runs, root, tasks_root)
    md += tasks_md
    figures += tasks_figures
    budget_md, budget_figures = budget_section(runs, root, tasks_root)
    md += budget_md
    figures += budget_figures
    for sweep in sweeps:
        if sweep.name in (*TASK_EXPERIMENTS, BUDGET_EXPERIMENT):  # their own sections above
            summary.append(f"{sweep.name}: {len(sweep.runs)} runs, see its section")
            continue
        figure = plot_losses(sweep, root / f"{file_name(sweep.name)}_loss.png", log_y)
        md += sweep_section(sweep, root, figure, trained_in)
        figures.append(figure)
        if is_interaction(sweep):
            heatmap = plot_interaction(sweep, root / f"{file_name(sweep.name)}_heatmap.png")
            md += interaction_section(sweep, heatmap)
            figures.append(heatmap)
        summary.append(summary_line(sweep))
    md += compare_sections(root)
    md += time_section(runs)
    optuna_md, optuna_figures = optuna_sections(root, runs)
    md += optuna_md
    figures += optuna_figures
    markdown = root / "report.md"
    markdown.write_text("\n".join(md).rstrip() + "\n")
    return Report(markdown, write_csv(runs, root, root / "results.csv"), figures, summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fmnist_lab.report",
        description="Tables (report.md), one CSV row per run (results.csv) and loss figures "
                    "(*_loss.png) from the results.json files below a sweep or study folder.")
    parser.add_argument("dir", type=Path, help="sweep folder or a whole study folder")
    parser.add_argument("--log-y", action="store_true",
                        help="log-scale loss axes (default: only where values span > 2 decades)")
    parser.add_argument("--readme", type=Path, metavar="FILE",
                        help="also regenerate the table after each line of FILE that names an "
                             "experiment as (record: `NAME`...): the seed's numbers beside ours")
    parser.add_argument("--tasks", type=Path, metavar="DIR",
                        help="a tasks record (results/tasks): fmnist_55k's runs for a tasks "
                             "sweep that lacks them, and what the budget record's cells that "
                             "repeat its protocol are checked against")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.dir, log_y=args.log_y, tasks_root=args.tasks)
        changed = update_readme(args.readme, args.dir) if args.readme is not None else None
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write the report: {e}", file=sys.stderr)
        return 1
    lines = [f"wrote {report.markdown}", *(f"  {line}" for line in report.summary),
             f"also {report.csv} and {len(report.figures)} figure(s): "
             + ", ".join(p.name for p in report.figures)]
    if changed is not None:
        lines.append(f"{args.readme}: record tables "
                     + ("regenerated" if changed else "already current"))
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # `report DIR | head`: the reader left early; every file is written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
    return 0
