"""How alike two representations are: neuron-by-neuron Pearson correlation matrices (the
seed's Figure 12 statistics, off-diagonal ones beside them) and linear CKA. numpy only: the
activations come from fmnist_lab.compare, which reads them off the networks.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def live_units(acts: np.ndarray) -> np.ndarray:
    """Mask of the units (columns) whose activity varies over the images.

    A unit with zero variance has no correlation with anything (corrcoef gives NaN). In
    float32 a constant unit can still wobble by rounding, so "zero" is judged relative to
    the layer's largest activation.
    """
    acts = np.asarray(acts, dtype=np.float64)
    scale = np.abs(acts).max() if acts.size else 0.0
    return acts.std(axis=0) > 1e-6 * scale


def correlation_stats(acts: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Pearson correlation matrix of the live units of `acts` (images x units), and its stats.

    `mean`/`std` cover all entries, the diagonal of ones included, as the seed computed
    them; `offdiag_mean`/`offdiag_std` leave the diagonal out (None below two live units).
    """
    acts = np.asarray(acts, dtype=np.float64)
    live = live_units(acts)
    n = int(live.sum())
    corr = np.corrcoef(acts[:, live], rowvar=False).reshape(n, n) if n else np.zeros((0, 0))
    off = corr[~np.eye(n, dtype=bool)]
    stats = {
        "units": int(acts.shape[1]),
        "dead_units": int(acts.shape[1] - n),
        "shape": [n, n],
        "mean": float(corr.mean()) if n else None,
        "std": float(corr.std()) if n else None,
        "offdiag_mean": float(off.mean()) if off.size else None,
        "offdiag_std": float(off.std()) if off.size else None,
    }
    return corr, stats


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between two representations of the same images (rows).

    Kornblith et al. (2019), eq. for the linear kernel on centred features:
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F). 1 for identical representations, invariant
    to orthogonal transforms and isotropic scaling; NaN when one of them is constant.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"different numbers of images: {x.shape[0]} and {y.shape[0]}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    denominator = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if denominator == 0:
        return float("nan")
    return float(np.linalg.norm(y.T @ x) ** 2 / denominator)
