"""mmpt's Hydra sweeper plugin: hydra/sweeper=resumable_optuna, its settings registered by config.py."""
