#!/usr/bin/env bash
# Set up .venv (if needed) and run the quick-start experiment (conf/experiment/quickstart.yaml)
# offline on the bundled data. Extra arguments are Hydra overrides, e.g. trainer.max_steps=50.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-disabled}
exec .venv/bin/python train.py experiment=quickstart "$@"
