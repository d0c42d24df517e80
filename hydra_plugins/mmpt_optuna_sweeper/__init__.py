"""mmpt's Hydra sweeper plugin: hydra/sweeper=resumable_optuna (conf/hydra/sweeper/resumable_optuna.yaml)."""
