#!/usr/bin/env bash
# The CFS ablation (MMAvg with IFS only vs IFS+CFS, results/paper/cfs_ablation.csv): train, evaluate, aggregate.
#
#   bash scripts/table_cfs.sh OUT [train overrides ...] [-- eval overrides ...]
#
# Rows: for E in {16, 32} and r in {2, 4, 8}, IFS only (cfs=none) next to the IFS+CFS model it is compared with:
#   cfs_ifs_e{E}_r{r}    + t1_mixlora_e{E}_r{r}     as released (the paper's bars)
#   cfs_c_ifs_e{E}_r{r}  + t1c_mixlora_e{E}_r{r}    the corrected MixLoRA (alpha = 2E in both)
# The IFS+CFS rows are Table 1's: with the same OUT as scripts/table1.sh they are reused, not trained again.
#
#   bash scripts/table_cfs.sh runs/paper model.paths.llm=/ckpt/vicuna-7b-v1.3 ... -- task.mme.path=/data/mme ...
#   RESULTS=runs/cfs/results bash scripts/table_cfs.sh runs/cfs model=tiny data=synthetic trainer=single \
#     trainer.max_steps=1 -- limit=2                                        # CPU smoke run on the tiny stack
# Options and environment (NPROC, ROWS, DRY_RUN, KEEP_GOING, RESULTS, EVAL_DEVICE, PY): scripts/table_lib.sh,
# docs/reproduce.md.
source "$(dirname "$0")/table_lib.sh"
TABLE=table_cfs
ROW_LIST=()
for variant in "" c_; do
  for setting in e16_r2 e32_r2 e16_r4 e32_r4 e16_r8 e32_r8; do
    if [ -z "$variant" ]; then ROW_LIST+=("cfs_ifs_$setting" "t1_mixlora_$setting")
    else ROW_LIST+=("cfs_c_ifs_$setting" "t1c_mixlora_$setting"); fi
  done
done
table_main "$@"
