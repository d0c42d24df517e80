"""hydra/sweeper=resumable_optuna: mmpt's Optuna sweeper (what it does: _impl.py's docstring;
its settings: config.py).

Hydra imports every module under hydra_plugins whose name does not start with `_` at each start,
to find plugins, so this one and config.py stay light: Optuna and the parts of the sweep (the
`_` modules) are imported only when a sweep is built.
"""
import sys
from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from mmpt.errors import MMPTError


class ResumableOptunaSweeper(Sweeper):
    """Takes hydra-optuna-sweeper's keys (hydra.sweeper.*) plus pruner, max_trials and heartbeat (config.py)."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        with _one_line_errors():
            from ._impl import OptunaSweep

            self.impl = OptunaSweep(**self.kwargs)
            self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        with _one_line_errors():
            return self.impl.sweep(arguments)


class _one_line_errors:
    """A bad setting (an MMPTError) is one line on stderr and exit status 2, as in train.py."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if isinstance(error, MMPTError):
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        return False
