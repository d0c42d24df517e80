#!/bin/bash
# The library-algorithm experiments of docs/results.md (issue 33) on MiniLM, k = 32, 3 seeds:
#   1. the GLUE LoRA experts and their library (scripts/results_library.sh experts: one rank-8
#      LoRA per mixture task, 200 steps of 32, seed 0), with PhatGOOSE gates (mttl's defaults)
#      and MBC clusters (k = 2);
#   2. one LoRA expert per MBC cluster, trained on the uniform mixture of the cluster's tasks at
#      the same budget per task (200 steps of 32 per task), and a library of them;
#   3. transfer to RTE and CB on the k-shot samples, steps and head lr of the earlier library rows:
#      arrow, phatgoose, ties, dare_ties over the GLUE library, arrow over the MBC library, and
#      LoRA from scratch (the MTTL section's lora_scratch), all paired by seed.
#   bash scripts/results_library_algorithms.sh         (two one-thread streams; about 40 min on an
#       idle 2-core machine, 2 h beside other work: the runs of docs/results.md were split by hand
#       into up to five streams, by dataset, which gives the same runs)
#   bash scripts/results_minilm.sh archive multirun/minilm_library_algorithms/*  (config, metrics, log -> results/)
#   python -m mmpt.report results/minilm_library_algorithms --baseline lora
. "$(dirname "$0")/results_common.sh"
OUT=multirun/minilm_library_algorithms
LIB=libs/minilm_glue_lora
MBC=libs/minilm_glue_mbc

expert() { OUT="$OUT" bash scripts/results_library.sh train_experts "$@"; }  # as its experts (cola sst2 mrpc stsb)
build_lib() {
    while [ "$(ls "$OUT"/experts/*/*/metrics.json 2>/dev/null | wc -l)" -lt 4 ]; do sleep 30; done
    [ -d "$LIB" ] || $PY -m mmpt.library build --out "$LIB" "$OUT/experts"
    $PY -m mmpt.library show "$LIB"
}
wait_lib() { while [ ! -f "$LIB/index.json" ]; do sleep 30; done; }

gates_and_clusters() {
    wait_lib
    [ -f "$LIB/clusters.json" ] || $PY -m mmpt.library cluster "$LIB" --k 2
    $PY -m mmpt.library gates "$LIB"
}

mbc_experts() {  # one expert per cluster; 200 steps of 32 per task of the cluster, uniform mixing
    [ -f "$LIB/clusters.json" ] || gates_and_clusters
    i=0
    for tasks in $($PY -c "import json, sys; print(' '.join('[' + ','.join(t) + ']' for t in json.load(open(sys.argv[1])).values()))" "$LIB/clusters.json"); do
        i=$((i + 1)); n=$(echo "$tasks" | tr ',' '\n' | wc -l)
        complete "$OUT/mbc/cluster_$i" 1 && continue
        $PY train.py -m experiment=minilm_glue method=lora method.rank=8 dataset=glue_mix \
            dataset.name=mbc_$i "dataset.tasks=$tasks" dataset.sampling=uniform dataset.max_length=128 \
            seed=0 trainer.max_steps=$((200 * n)) trainer.batch_size=32 \
            optimizer.groups.adapters.lr=3e-3 hydra.sweep.dir="$OUT/mbc/cluster_$i"
    done
    [ -d "$MBC" ] || $PY -m mmpt.library build --out "$MBC" "$OUT"/mbc/cluster_*
    $PY -m mmpt.library show "$MBC"
}

transfer_glue() {
    complete "$OUT/transfer_glue" 24 ||
    $PY finetune.py -m library="$LIB" dataset="$HELD_OUT" finetune_type=arrow,phatgoose,ties,dare_ties $FEW \
        hydra.sweep.dir="$OUT/transfer_glue"
}
transfer_mbc() {
    complete "$OUT/transfer_mbc" 6 ||
    $PY finetune.py -m library="$MBC" dataset="$HELD_OUT" finetune_type=arrow $FEW task_name=mbc \
        hydra.sweep.dir="$OUT/transfer_mbc"
}
lora_scratch() {  # as scripts/results_minilm.sh lora_scratch
    complete "$OUT/lora_scratch" 6 ||
    $PY train.py -m experiment=minilm_glue method=lora dataset="$HELD_OUT" $FEW \
        optimizer.groups.adapters.lr=1e-3 hydra.sweep.dir="$OUT/lora_scratch"
}

if [ $# -gt 0 ]; then "$@"; exit; fi   # e.g. bash scripts/results_library_algorithms.sh transfer_mbc
mkdir -p outputs libs
{ expert cola sst2; build_lib; gates_and_clusters; transfer_glue; } > outputs/results_library_algorithms_a.log 2>&1 &
{ expert mrpc stsb; lora_scratch; wait_lib; while [ ! -f "$LIB/clusters.json" ]; do sleep 30; done;
  mbc_experts; transfer_mbc; } > outputs/results_library_algorithms_b.log 2>&1 &
wait
