"""What resumable_optuna adds to hydra-optuna-sweeper (1.3, Optuna 2.x) when a study is resumed.

A study is resumed when `hydra.sweeper.storage` already holds `hydra.sweeper.study_name`. Then:
- Trials a killed sweep left RUNNING are marked FAIL (one sweep process per study is assumed).
- The sampler is rebuilt with seed = its configured seed + the study's trial count. A fixed seed
  would restart the sampler's random sequence, so a resumed study re-proposed its first trials.
  The offset keeps runs reproducible: the same study state gives the same proposals.
- A grid (GridSampler) runs only its points the study has not finished (completed or failed);
  a finished grid runs nothing.
Always: a trial's job number (so its folder, hydra.sweep.subdir = ${hydra.job.num}) is its
trial number in the study, so a resumed sweep in the same sweep dir adds folders instead of
overwriting them; a sweep that would write into an existing trial folder stops before it starts.
Optuna's set-up lines are quieted; the sweep logs one line at its start and one at its end.
"""
import functools
import itertools
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import optuna
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.trial import Trial, TrialState

from mmpt.errors import ConfigError

log = logging.getLogger(__name__)


def _quiet() -> None:
    """Hide set-up chatter: Optuna's study lines and the plugin's echo of its settings."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hydra_plugins.hydra_optuna_sweeper._impl").setLevel(logging.WARNING)


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    def sweep(self, arguments: List[str]) -> None:
        _quiet()
        study = self._existing_study()
        done, note, seed = 0, "", self.config.hydra.sweeper.sampler.get("seed")
        if study is not None:
            killed = [t.number for t in study.trials if t.state == TrialState.RUNNING]
            for number in killed:
                study.tell(number, state=TrialState.FAIL)
            done = len(study.trials)
            note = f", {len(killed)} left running by a killed sweep marked FAIL" if killed else ""
            seed = self._reseed(offset=done)
            if self._is_grid():
                self.n_trials = min(self.n_trials, self._grid_points_left(study, arguments))
        self._refuse_existing_folders(range(done, done + self.n_trials))
        log.info("Optuna study %s (%s): %d trials so far%s; running %d more with %s%s", self.study_name,
                 self.storage or "in memory", done, note, self.n_trials,
                 "GridSampler" if self._is_grid() else type(self.sampler).__name__,
                 f" (seed {seed})" if seed is not None else "")
        super().sweep(arguments)
        results = OmegaConf.load(Path(self.sweep_dir) / "optimization_results.yaml")
        if "best_value" in results:
            log.info("best value %s with %s", results.best_value, OmegaConf.to_container(results.best_params))

    def _configure_trials(self, trials: List[Trial], search_space_distributions: Dict[str, Any],
                          fixed_params: Dict[str, Any]) -> Sequence[Sequence[str]]:
        # The launcher numbers jobs from self.job_idx: start the batch at its first trial number.
        numbers = [t.number for t in trials]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise RuntimeError(f"study {self.study_name}: trial numbers {numbers} are not consecutive "
                               "(another process is adding trials to it); trial folders would be mixed up")
        self.job_idx = numbers[0]
        return super()._configure_trials(trials, search_space_distributions, fixed_params)

    def _existing_study(self) -> Optional[optuna.Study]:
        if self.storage is None or self.study_name is None:  # in memory / unnamed: always a new study
            return None
        try:
            return optuna.load_study(study_name=self.study_name, storage=self.storage)
        except KeyError:
            return None

    def _is_grid(self) -> bool:
        return isinstance(self.sampler, functools.partial) and self.sampler.func == optuna.samplers.GridSampler

    def _reseed(self, offset: int) -> Optional[int]:
        """Rebuild the sampler with its seed + offset; the seed now in use (None: unseeded)."""
        cfg = self.config.hydra.sweeper.sampler
        if self._is_grid() or cfg.get("seed") is None:
            return None
        self.sampler = instantiate(cfg, seed=cfg.seed + offset)
        return cfg.seed + offset

    def _grid_points_left(self, study: optuna.Study, arguments: List[str]) -> int:
        """Grid points no finished trial of the study has run (GridSampler skips those too)."""
        space, fixed = create_params_from_overrides(self._parse_sweeper_params_config() + list(arguments))
        grid = {name: self._to_grid_sampler_choices(d) for name, d in space.items() if name not in fixed}
        names = sorted(grid)
        finished = {tuple(t.params.get(n) for n in names) for t in study.trials if t.state.is_finished()}
        return len(set(itertools.product(*(grid[n] for n in names))) - finished)

    def _refuse_existing_folders(self, numbers: range) -> None:
        """Stop before a trial would write into another trial's folder (default subdir layout only)."""
        if OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get("subdir") != "${hydra.job.num}":
            return
        taken = [n for n in numbers if (Path(self.sweep_dir) / str(n) / ".hydra").exists()]
        if taken:
            raise ConfigError("hydra.sweep.dir", f"{self.sweep_dir} already holds trial folder(s) {taken} of "
                              "another study; use a new sweep dir, or the same hydra.sweeper.storage and "
                              "study_name to continue that study")
