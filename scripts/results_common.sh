# What the results scripts share (sourced: `. "$(dirname "$0")/results_common.sh"`): the project
# root as the working directory, one thread per stream, the seeds and held-out tasks of the k = 32
# transfer rows, and the skip test that lets a stopped reproduction pick up where it left off.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS=1 HYDRA_FULL_ERROR=1
PY=${PYTHON:-.venv/bin/python}
SEEDS=seed=0,1,2
HELD_OUT=${HELD_OUT:-rte,cb}
# A sweep dir whose N runs all wrote metrics.json is skipped (a partly done sweep is run again whole).
complete() { [ "$(ls "$1"/*/metrics.json 2>/dev/null | wc -l)" -ge "$2" ] && echo "skip $1 (done)"; }
# The k = 32 transfer schedule (docs/results.md): 32 + 32 examples per seed, 20 epochs at batch 8.
FEW="k_shot=32 $SEEDS trainer.epochs=20 trainer.max_steps=null trainer.batch_size=8 trainer.eval_every=null
     dataset.max_length=128 optimizer.groups.head.lr=1e-2"
