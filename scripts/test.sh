#!/usr/bin/env bash
# Set up .venv (if needed) and run the test suite offline. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the long real-data runs left out by default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
exec .venv/bin/python -m pytest "$@"
