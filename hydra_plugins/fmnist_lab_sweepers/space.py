"""The optuna sweeper's search space: Hydra's sweep syntax (`choice(...)`, `interval(...)`,
`tag(log, interval(...))`, `range(...)`) as optuna distributions, and back as overrides.

(Imported at every Hydra start-up with its package: optuna and Hydra's types are imported
inside the functions.)
"""

from __future__ import annotations

from typing import Any


def distribution(override: Any) -> Any:
    """The optuna distribution of a sweep override; ValueError saying what is wrong."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    sweep = override.value()
    log_scale = "log" in (getattr(sweep, "tags", None) or set())
    try:
        if isinstance(sweep, IntervalSweep):
            low, high = sweep.start, sweep.end
            if not low < high:
                raise ValueError(f"interval({low}, {high}) is empty: the lower bound first")
            if log_scale and low <= 0:
                raise ValueError(f"tag(log, interval({low}, {high})) needs a lower bound > 0")
            if isinstance(low, int) and isinstance(high, int):
                return IntDistribution(low, high, log=log_scale)
            return FloatDistribution(float(low), float(high), log=log_scale)
        if log_scale:
            raise ValueError("tag(log, ...) goes with interval(...) only")
        if isinstance(sweep, RangeSweep) and not sweep.shuffle:
            values = list(override.sweep_iterator())
            if not values:
                raise ValueError(f"range({sweep.start}, {sweep.stop}, {sweep.step}) is empty")
            if len(values) == 1:
                raise ValueError(f"range({sweep.start}, {sweep.stop}, {sweep.step}) has one "
                                 "value: give it as a plain value")
            if all(isinstance(v, int) for v in values):
                step = sweep.step if sweep.step > 0 else -sweep.step
                return IntDistribution(min(values), max(values), step=step)
            return FloatDistribution(min(values), max(values), step=abs(float(sweep.step)))
        if isinstance(sweep, ChoiceSweep | RangeSweep):
            values = list(override.sweep_iterator())
            if any(not isinstance(v, str | int | float | bool | type(None)) for v in values):
                raise ValueError("choice(...) takes plain values (strings, numbers, booleans)")
            if len(set(map(repr, values))) < 2:
                raise ValueError("choice(...) needs two or more different values")
            return CategoricalDistribution(values)
    except ValueError:
        raise
    except Exception as e:  # optuna's own checks of a distribution
        raise ValueError(str(e).splitlines()[0]) from e
    raise ValueError(f"{type(sweep).__name__} is not a search dimension: choice, interval, "
                     "range")


def corner_values(dist: Any) -> list[Any]:
    """Every choice, or both ends of a numeric distribution."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def suggest(trial: Any, name: str, dist: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)


def quote(text: str) -> str:
    """`text` as one quoted value of a Hydra override."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
