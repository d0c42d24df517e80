"""Pruners of your own for Optuna sweeps: a module here with an Optuna BasePruner subclass, and a
preset naming it, conf/hydra/sweeper/pruner/<name>.yaml (`_target_: mmpt.pruners.<module>.<Class>`
and its options). `hydra/sweeper/pruner=<name>` then picks it; the sweeper and each job build it
from the preset, so no other file changes (docs/sweeps.md#adding-a-pruner). Optuna's own pruners
need no module: their presets name optuna.pruners.* directly.
"""
