#!/bin/bash
# Expert libraries on MiniLM (docs/results.md, issue 14): transfer at k = 32 to RTE and CB, 3 seeds.
#   bash scripts/results_library.sh                     (every part below, in order)
#   bash scripts/results_library.sh prompt_transfer     (one part)
#   python -m mmpt.report multirun/minilm_library
# This part: a library of prompt experts. One prompt_tuning run with a prompt per GLUE mixture task
# (CoLA, SST-2, MRPC, STS-B; mixed-task batches) at the MTTL pre-training budget of
# conf/experiment/minilm_mttl_pretrain.yaml, its four prompts built into a library, then `routed`
# (SMoP's router over the frozen prompts) and `uniform` (their mean) on the held-out tasks, against
# prompt tuning from scratch on the same k-shot samples.
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HYDRA_FULL_ERROR=1
PY=${PYTHON:-.venv/bin/python}
SEEDS=seed=0,1,2
HELD_OUT=${HELD_OUT:-rte,cb}
# the few-shot protocol of the MTTL transfer in scripts/results_minilm.sh
FEW="k_shot=32 $SEEDS trainer.epochs=20 trainer.max_steps=null trainer.batch_size=8 trainer.eval_every=null
     dataset.max_length=128 optimizer.groups.head.lr=1e-2"

PROMPT_RUN=outputs/minilm_library/prompts_per_task
PROMPT_LIB=libs/minilm_glue_prompts
prompt_pretrain() {  # 800 steps x 32 mixed examples, as the Poly skills; prompt lr of the results_minilm table
    $PY train.py model=minilm dataset=glue_mix method=prompt_tuning method.per_task=true seed=0 \
        trainer.max_steps=800 trainer.batch_size=32 trainer.eval_every=400 dataset.max_length=128 \
        dataset.max_eval_per_task=200 optimizer.warmup_ratio=0.06 optimizer.groups.head.lr=1e-3 \
        optimizer.groups.prompt.lr=3e-3 hydra.run.dir="$PROMPT_RUN"
}
prompt_library() {  # one expert per task: cola, sst2, mrpc, stsb
    [ -d "$PROMPT_LIB" ] || $PY -m mmpt.library build --out "$PROMPT_LIB" "$PROMPT_RUN"
    $PY -m mmpt.library show "$PROMPT_LIB"
}
prompt_transfer() {  # routed: the router trains (lr of the prompt_routing row in results_minilm) + the head
    $PY finetune.py -m library="$PROMPT_LIB" dataset="$HELD_OUT" finetune_type=routed,uniform $FEW \
        +optimizer.groups.router.lr=3e-2 hydra.sweep.dir=multirun/minilm_library/prompt_transfer
}
prompt_scratch() {  # a fresh prompt (and head) on the same k-shot samples, seeds and steps
    $PY train.py -m model=minilm method=prompt_tuning dataset="$HELD_OUT" $FEW optimizer.groups.prompt.lr=3e-3 \
        hydra.sweep.dir=multirun/minilm_library/prompt_scratch
}
prompts() { prompt_pretrain && prompt_library && prompt_transfer; prompt_scratch; }

if [ $# -gt 0 ]; then "$@"; exit; fi
mkdir -p outputs
prompts > outputs/results_library_prompts.log 2>&1
