"""hydra-optuna-sweeper's search-space grammar, read into Optuna 4+ distributions.

`hydra.sweeper.params` (and sweep overrides on the command line) use Hydra's override grammar:
- `choice(a, b, ...)`            -> CategoricalDistribution (values as Hydra would print them)
- `range(start, stop[, step])`   -> IntDistribution / FloatDistribution with that step over the
                                    values Hydra's range gives (stop excluded, as in Hydra);
                                    `shuffle(range(...))` -> CategoricalDistribution of them
- `interval(low, high)`          -> FloatDistribution (IntDistribution when both ends are ints)
- `tag(log, interval(...))`      -> the same on a log scale
- a plain `key=value`            -> a fixed value passed to every trial
A grid (hydra/sweeper/sampler=grid) takes choice() and range() only: its points are their values.
"""
import itertools
import math
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

from mmpt.errors import ConfigError


def _key(name: str) -> str:
    return f"hydra.sweeper.params.{name}"


def _values(override: Override) -> list:
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    for v in values:
        if not isinstance(v, (str, int, float, bool, type(None))):
            raise ConfigError(_key(override.get_key_element()), f"a choice takes str, int, float, bool or "
                              f"null values, got {type(v).__name__} {v!r}")
    return values


def _distribution(override: Override) -> BaseDistribution:
    name, value = override.get_key_element(), override.value()
    if override.is_choice_sweep():
        return CategoricalDistribution(_values(override))
    if override.is_range_sweep():
        values = _range_values(value) if isinstance(value.step, float) or isinstance(value.start, float) \
            else _values(override)
        if not values:
            raise ConfigError(_key(name), f"{override.get_value_element_as_str()} is empty")
        if value.shuffle:
            return CategoricalDistribution(values)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (value.start, value.stop, value.step)):
            return IntDistribution(values[0], values[-1], step=int(value.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if override.is_interval_sweep():
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(_key(name), f"{override.get_value_element_as_str()} is not a search space: use choice(), "
                      "range(), interval() or tag(log, interval())")


def _range_values(r) -> list[float]:
    """A float range's values, stop excluded as in Python: Hydra adds up the step, so
    range(0.1, 0.4, 0.1) would end at 0.30000000000000004 and then 0.4 (4 values, not 3)."""
    start, stop, step = float(r.start), float(r.stop), float(r.step)
    n = max(0, math.ceil((stop - start) / step - 1e-9))
    # 12 significant digits: 0.1 + 2 * 0.1 is the point 0.3, not 0.30000000000000004
    return [float(f"{start + i * step:.12g}") for i in range(n)]


def parse(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
    """(searched parameters -> distribution, fixed parameters -> value string) of `key=value` strings."""
    space, fixed = {}, {}
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
    except Exception as e:  # Hydra's OverrideParseException: one line names the bad override
        raise ConfigError("hydra.sweeper.params", str(e).splitlines()[0]) from None
    for override in overrides:  # a key given again later (the command line after params) wins
        name = override.get_key_element()
        if override.is_sweep_override():
            space[name] = _distribution(override)
            fixed.pop(name, None)
        else:
            fixed[name] = override.get_value_element_as_str()
            space.pop(name, None)
    return space, fixed


def grid_points(space: dict[str, BaseDistribution]) -> list[dict[str, Any]]:
    """Every point of a grid over `space` (in the order of its keys and values)."""
    axes = {}
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            axes[name] = list(d.choices)
        elif isinstance(d, (IntDistribution, FloatDistribution)) and d.step is not None and not d.log:
            n = int(round((d.high - d.low) / d.step)) + 1
            # 12 significant digits: 0.1 + 2 * 0.1 is the grid point 0.3, not 0.30000000000000004
            axes[name] = [type(d.low)(float(f"{d.low + i * d.step:.12g}")) for i in range(n)]
        else:
            raise ConfigError(_key(name), "a grid (hydra/sweeper/sampler=grid) takes choice() or range(), "
                              "not interval()")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
