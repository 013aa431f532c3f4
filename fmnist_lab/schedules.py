"""Learning-rate schedules over a run's optimizer steps (conf/scheduler/).

Each takes the optimizer and `total_steps`, the optimizer steps of the whole fit, which the
module counts (fmnist_lab.module.Classifier.configure_optimizers); the configs give the rest
as fractions of the run, so a schedule keeps its shape at any batch size or epoch count.
torch's OneCycleLR has that signature already and is used as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup: float = 0.05,
                  min_lr_ratio: float = 0.0) -> LRScheduler:
    """Linear warm-up from 1% of the learning rate over `warmup` x total_steps, then cosine
    decay to `min_lr_ratio` x the learning rate at the last step."""
    warmup_steps = round(warmup * total_steps)
    eta_min = min_lr_ratio * optimizer.param_groups[0]["lr"]
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=eta_min)
    if warmup_steps == 0:
        return cosine
    ramp = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup_steps])


def step_decay(optimizer: Optimizer, total_steps: int, milestones: Sequence[float] = (0.5, 0.75),
               gamma: float = 0.1) -> LRScheduler:
    """The learning rate times `gamma` at each milestone, a fraction of total_steps."""
    return MultiStepLR(optimizer, [round(m * total_steps) for m in milestones], gamma=gamma)
