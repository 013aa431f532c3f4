"""`python -m fmnist_lab.report DIR`: the tables and figures of a sweep or study folder.

Reads every `results.json` below DIR (one sweep, a whole `make study` or `make tasks` folder)
and writes into DIR report.md, results.csv and the figures. A module per concern:

- runs: reading runs, grouping them into sweeps (rows of swept values, seeds together);
- stats: the one mean ± std over seeds, ranks, the bootstrap;
- tables: the markdown tables and results.csv;
- figures: loss against epoch;
- cross_validation, interaction, tasks, search, representation, timing: one section each;
- docs: the record's tables regenerated in the docs (`--readme FILE`);
- command: the command line, and write_report, which puts them together.

It needs numpy and matplotlib only (optuna where a search left its storage), never torch or
Lightning, so it starts fast and runs where they are not installed.
"""

from fmnist_lab.report.command import main, write_report

__all__ = ["main", "write_report"]
