#!/usr/bin/env bash
# Creates .venv/ in the repo root and installs mmpt with everything its runs and tests need.
# Safe to run again: it does nothing when setup.cfg has not changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.mmpt-installed
want=$(cat setup.cfg scripts/install.sh | sha1sum | cut -c1-40)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then exit 0; fi
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# 1. torch on its own, first. CPU users get 2.13.0; GPU users: set TORCH_SPEC, e.g.
#    TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
"${pip[@]}" ${TORCH_SPEC:-torch==2.13.0}
# 2. promptsource's import needs pkg_resources, which setuptools 82 removed.
"${pip[@]}" "setuptools<82" wheel
# 3. mmpt itself, editable, with the sweep extra (Optuna 5, launchers, dashboard), the test, the
#    quantization (bitsandbytes), the eval (lm-evaluation-harness) and the docs (MkDocs + Material)
#    extras. hydra-optuna-sweeper (pinned to optuna<3) is no longer used: mmpt's plugin took over
#    its YAML.
.venv/bin/python -m pip uninstall --quiet --yes hydra-optuna-sweeper 2>/dev/null || true
"${pip[@]}" -e ".[sweep,dev,quant,eval,docs]"
# 4. promptsource pins Python < 3.10 and old UI packages it does not need at import.
"${pip[@]}" --no-deps --ignore-requires-python promptsource==0.2.3
echo "$want" >"$stamp"
