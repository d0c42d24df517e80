"""Configs that only finetune.py sees (conf/finetune.yaml adds this package to its hydra.searchpath):
the MTTL fine-tuning grid, hparams_search=mttl_finetune. Kept out of conf/ so train.py does not offer it."""
