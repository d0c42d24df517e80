#!/bin/bash
# The expert-library experiments of docs/results.md (issue 14) on MiniLM, k = 32, 3 seeds:
#   1. one LoRA expert per GLUE mixture task (CoLA, SST-2, MRPC, STS-B) at the MTTL pre-training
#      budget (scripts/results_minilm.sh's minilm_mttl_pretrain: 800 steps of 32 mixed examples,
#      i.e. 200 steps of 32 per task), rank 8 like the skills;
#   2. a library of them, and one of the pre-trained poly_lora skills (if results_minilm.sh made them);
#   3. transfer to RTE and CB with every library finetune_type, on the k-shot samples, steps and
#      head lr of the MTTL transfer rows (Poly / Z / MuZ and LoRA from scratch: results_minilm.sh);
#   4. the cost table (bench/library.py);
#   5. the same with prompt experts: one prompt_tuning run with a prompt per mixture task
#      (method.per_task=true, mixed-task batches) at the same budget, its prompts built into a
#      library, `routed` (SMoP's router over the frozen prompts) and `uniform` (their mean), against
#      prompt tuning from scratch on the same k-shot samples.
#   bash scripts/results_library.sh               (about 1.5 hours on 2 CPU cores; four streams of one thread)
#   python -m mmpt.report multirun/minilm_library --baseline library/uniform
. "$(dirname "$0")/results_common.sh"
OUT=${OUT:-multirun/minilm_library}

train_experts() {  # one LoRA per task named, seed 0, 200 steps of 32, in $OUT/experts/<task>
    for task in "$@"; do
        extra=""
        [ "$task" = sst2 ] && extra="dataset.val_fraction=0.02"
        complete "$OUT/experts/$task" 1 && continue
        $PY train.py -m experiment=minilm_glue method=lora method.rank=8 dataset="$task" seed=0 \
            trainer.max_steps=200 trainer.batch_size=32 optimizer.groups.adapters.lr=3e-3 $extra \
            hydra.sweep.dir="$OUT/experts/$task"
    done
}

experts() {  # one LoRA per GLUE mixture task (the library)
    train_experts cola sst2 mrpc stsb
    [ -d libs/minilm_glue_lora ] || $PY -m mmpt.library build --out libs/minilm_glue_lora "$OUT/experts"
    $PY -m mmpt.library show libs/minilm_glue_lora
}

skills_library() {  # the poly_lora skills of results_minilm.sh, when they exist
    PRE=outputs/minilm_mttl_pretrain/skills
    [ -f "$PRE/metrics.json" ] || { echo "no $PRE: run scripts/results_minilm.sh mttl_pretrain first"; return; }
    [ -d libs/minilm_glue_skills ] || $PY -m mmpt.library build --out libs/minilm_glue_skills "$PRE"
    complete "$OUT/transfer_skills" 18 ||
    $PY finetune.py -m library=libs/minilm_glue_skills dataset="$HELD_OUT" finetune_type=arrow,uniform,ties $FEW \
        hydra.sweep.dir="$OUT/transfer_skills"
}

transfer_merge() {
    complete "$OUT/transfer_merge" 18 ||
    $PY finetune.py -m library=libs/minilm_glue_lora dataset="$HELD_OUT" finetune_type=arrow,uniform,ties $FEW \
        hydra.sweep.dir="$OUT/transfer_merge"
}
transfer_trained() {  # waits for the library that experts (another stream) builds
    while [ ! -f libs/minilm_glue_lora/index.json ]; do sleep 30; done
    complete "$OUT/transfer_trained" 12 ||
    $PY finetune.py -m library=libs/minilm_glue_lora dataset="$HELD_OUT" finetune_type=weighted,library_poly $FEW \
        hydra.sweep.dir="$OUT/transfer_trained"
}
transfer() { transfer_merge; transfer_trained; }

PROMPT_RUN=outputs/minilm_library/prompts_per_task
PROMPT_LIB=libs/minilm_glue_prompts
prompt_pretrain() {  # 800 steps x 32 mixed examples, as the Poly skills; prompt lr of the results_minilm table
    [ -f "$PROMPT_RUN/metrics.json" ] ||
    $PY train.py model=minilm dataset=glue_mix method=prompt_tuning method.per_task=true seed=0 \
        trainer.max_steps=800 trainer.batch_size=32 trainer.eval_every=400 dataset.max_length=128 \
        dataset.max_eval_per_task=200 optimizer.warmup_ratio=0.06 optimizer.groups.head.lr=1e-3 \
        optimizer.groups.prompt.lr=3e-3 hydra.run.dir="$PROMPT_RUN"
    [ -d "$PROMPT_LIB" ] || $PY -m mmpt.library build --out "$PROMPT_LIB" "$PROMPT_RUN"   # cola, sst2, mrpc, stsb
    $PY -m mmpt.library show "$PROMPT_LIB"
}
prompt_transfer() {  # routed trains the router (the prompt_routing row's lr in results_minilm) + the head
    complete "$OUT/transfer_prompts" 12 ||
    $PY finetune.py -m library="$PROMPT_LIB" dataset="$HELD_OUT" finetune_type=routed,uniform $FEW \
        +optimizer.groups.router.lr=3e-2 hydra.sweep.dir="$OUT/transfer_prompts"
}
prompt_scratch() {  # a fresh prompt (and head) on the same k-shot samples, seeds and steps
    complete "$OUT/prompt_scratch" 6 ||
    $PY train.py -m model=minilm method=prompt_tuning dataset="$HELD_OUT" $FEW optimizer.groups.prompt.lr=3e-3 \
        hydra.sweep.dir="$OUT/prompt_scratch"
}
prompts() { prompt_pretrain && prompt_transfer; prompt_scratch; }

if [ $# -gt 0 ]; then "$@"; exit; fi   # e.g. bash scripts/results_library.sh transfer
mkdir -p outputs libs
{ experts; transfer_merge; } > outputs/results_library_a.log 2>&1 &
transfer_trained > outputs/results_library_b.log 2>&1 &
{ prompt_pretrain && prompt_transfer; } > outputs/results_library_prompts.log 2>&1 &
{ prompt_scratch; skills_library; } > outputs/results_library_c.log 2>&1 &
wait
$PY bench/library.py | tee outputs/results_library_bench.md
