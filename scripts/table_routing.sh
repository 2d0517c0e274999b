#!/usr/bin/env bash
# The routing ablation (MME with instance / task / random routing at E=32, r=4, results/paper/routing_ablation.csv):
# train, evaluate, aggregate.
#
#   bash scripts/table_routing.sh OUT [train overrides ...] [-- eval overrides ...]
#
# Rows:
#   t1_mixlora_e32_r4, routing_task_e32_r4, routing_random_e32_r4          as released (the paper's numbers)
#   t1c_mixlora_e32_r4, routing_c_task_e32_r4, routing_c_random_e32_r4     the corrected MixLoRA
# Instance routing is Table 1's E32/r4 row (reused when OUT is scripts/table1.sh's). Task routing routes on each
# task's definition: the task rows read data/vision_flan/task_definitions.json (data/prepare_vision_flan.py
# --definitions TABLE), or the file in TASK_DEFINITIONS, which is passed to those rows only (the other rows refuse
# data.task_definitions), e.g. TASK_DEFINITIONS=data/synthetic/task_definitions.json for the synthetic suite.
# KEEP_GOING=1 lets the other rows finish when one fails.
#
#   bash scripts/table_routing.sh runs/paper model.paths.llm=/ckpt/vicuna-7b-v1.3 ... -- task.mme.path=/data/mme
#   TASK_DEFINITIONS=data/synthetic/task_definitions.json RESULTS=runs/routing/results \
#     bash scripts/table_routing.sh runs/routing model=tiny data=synthetic trainer=single trainer.max_steps=1 \
#     -- limit=2                                                            # CPU smoke run on the tiny stack
# Options and environment (NPROC, ROWS, DRY_RUN, KEEP_GOING, RESULTS, EVAL_DEVICE, PY): scripts/table_lib.sh,
# docs/reproduce.md.
source "$(dirname "$0")/table_lib.sh"
TABLE=table_routing
ROW_LIST=(t1_mixlora_e32_r4 routing_task_e32_r4 routing_random_e32_r4
          t1c_mixlora_e32_r4 routing_c_task_e32_r4 routing_c_random_e32_r4)
# Resolved from the calling directory (table_main moves to the repository root).
[ -n "${TASK_DEFINITIONS:-}" ] && TASK_DEFINITIONS=$(realpath -m "$TASK_DEFINITIONS")

table_row_train_args() {
  ROW_TRAIN=()
  if [ -n "${TASK_DEFINITIONS:-}" ] && [[ $1 == routing_*task_* ]]; then
    ROW_TRAIN=("data.task_definitions=$TASK_DEFINITIONS")
  fi
}

table_main "$@"
