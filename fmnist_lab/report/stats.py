"""Statistics over seeds: one mean ± std for every table and figure, and ranks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def finite(value: Any) -> float | None:
    """`value` as a float, None where it is missing, not a number, NaN or infinite."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def mean_std(values: list[Any]) -> tuple[float | None, float | None, int]:
    """Mean, sample std (ddof=1) and n of the finite values (over seeds, folds...): the one
    spread every table and figure shows. The std is None below two values: no spread."""
    kept = [v for v in map(finite, values) if v is not None]
    if not kept:
        return None, None, 0
    std = float(np.std(kept, ddof=1)) if len(kept) > 1 else None
    return float(np.mean(kept)), std, len(kept)


def _ranks(values: np.ndarray) -> np.ndarray:
    # Ties (equal accuracies on small folds are common) share their average rank.
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    for v in np.unique(values):
        ranks[values == v] = ranks[values == v].mean()
    return ranks


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman rank correlation; None when either side is constant."""
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if len(x) < 2 or rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: reject where adjusted < alpha
    and the family's chance of any false rejection stays at most alpha."""
    m = len(p_values)
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
