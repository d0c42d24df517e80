"""hydra/sweeper=resumable_optuna: hydra-optuna-sweeper's Optuna sweeper whose studies resume cleanly.

Hydra imports every module under hydra_plugins at each start to find plugins, so this one stays
light: the Optuna side (mmpt_optuna_sweeper/_impl.py) is imported only when a sweep is built.
"""
from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class ResumableOptunaSweeper(Sweeper):
    """Takes the `optuna` sweeper's keys (hydra.sweeper.*); what it adds: _impl.py's docstring."""

    def __init__(self, **kwargs: Any) -> None:
        from ._impl import ResumableOptunaSweeperImpl

        self.impl = ResumableOptunaSweeperImpl(**kwargs)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        return self.impl.sweep(arguments)
