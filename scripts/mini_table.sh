#!/usr/bin/env bash
# The CPU mini table (issue 6): LoRA vs MixLoRA at equal rank on the tiny stack and the synthetic suite,
# released vs corrected MixLoRA, IFS-only, random routing; every row over several seeds, mean +- std.
#
#   bash scripts/mini_table.sh [OUT_DIR]                      # default OUT_DIR=runs/mini; writes OUT_DIR/mini_table.{md,csv,json} + plots
#   ROWS="lora_r4 mixc_e8_r4" SEEDS="0 1" bash scripts/mini_table.sh runs/mini_small
#   DRY_RUN=1 bash scripts/mini_table.sh                     # print the commands only
#
# One stage-1 base (scripts/demo.sh's recipe, trained once and shared by every row and seed: the seeds vary the
# adapter/router initialisation, the dropout and the data order of stage 2), then per row and seed a stage-2
# run on data/synthetic/stage2.json and an evaluation (held-out sets + seen tasks, EVAL_LIMIT per group).
# Rows (alpha = 2r for LoRA and corrected MixLoRA, i.e. the same multiplier 2; alpha = 2E for released):
#   lora_r{2,4,8}                 LoRA
#   mixc_e8_r{2,4}, mixc_e16_r{2,4,8}      corrected MixLoRA (paper CFS, prompt routing, prefill decoding)
#   mixrel_e8_r{2,4}, mixrel_e16_r{2,4,8}  released MixLoRA (as coded CFS, mean over all tokens, per-step decoding)
#   (no E8/r8: MixLoRA selects r < E of its factors)
#   ifsc_e{8,16}_r4               corrected MixLoRA without CFS (IFS only)
#   randc_e{8,16}_r4              corrected MixLoRA with random routing (routing_source=random)
# Env: PY, SEEDS (default "0 1 2"), ROWS (default all), STAGE1_STEPS (1000), STAGE2_STEPS (300), LR (5e-3),
#      EVAL_LIMIT (10 per group), DRY_RUN. Finished runs are skipped, so an interrupted table resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=$(realpath -m "${1:-runs/mini}")
SEEDS=${SEEDS:-"0 1 2"}
STAGE1_STEPS=${STAGE1_STEPS:-1000}
STAGE2_STEPS=${STAGE2_STEPS:-300}
LR=${LR:-5e-3}
EVAL_LIMIT=${EVAL_LIMIT:-10}
EVAL_TASKS=mme,cvbench,pope,textvqa,vsr,snli_ve,cifar10,cifar100,mnist,seen
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

declare -A ROW
for r in 2 4 8; do
  ROW[lora_r$r]="adapter=lora adapter.rank=$r"
  for e in 8 16; do
    [ "$r" -lt "$e" ] || continue  # MixLoRA selects r < E factors: no E8/r8 row
    ROW[mixc_e${e}_r$r]="adapter=mixlora adapter.num_factors=$e adapter.rank=$r"
    ROW[mixrel_e${e}_r$r]="adapter=mixlora_released adapter.num_factors=$e adapter.rank=$r"
  done
done
for e in 8 16; do
  ROW[ifsc_e${e}_r4]="adapter=mixlora adapter.num_factors=$e adapter.rank=4 adapter.cfs=none"
  ROW[randc_e${e}_r4]="adapter=mixlora adapter.num_factors=$e adapter.rank=4 adapter.routing_source=random"
done
ALL="lora_r2 lora_r4 lora_r8 mixc_e8_r2 mixc_e8_r4 mixc_e16_r2 mixc_e16_r4 mixc_e16_r8
     mixrel_e8_r2 mixrel_e8_r4 mixrel_e16_r2 mixrel_e16_r4 mixrel_e16_r8
     ifsc_e8_r4 ifsc_e16_r4 randc_e8_r4 randc_e16_r4"
ROWS=${ROWS:-$ALL}
for row in $ROWS; do
  [ -n "${ROW[$row]+x}" ] || { echo "mini_table.sh: unknown row '$row'; rows: $(echo $ALL)" >&2; exit 2; }
done

run() { echo "+ $*"; [ -n "${DRY_RUN:-}" ] || "$@"; }
COMMON=(logger=disabled trainer.progress_bar=false)

echo "== suite and base mix"
[ -f data/synthetic/manifest.json ] || run $PY data/make_synthetic.py --out data/synthetic --seed 0 --quiet
[ -f data/synthetic/eval/seen/test.jsonl ] || run $PY -m mixlora.data.seen --suite data/synthetic --quiet
run $PY -m mixlora.data.base_mix --suite data/synthetic

echo "== stage 1: shared base ($STAGE1_STEPS steps)"
if [ -f "$OUT/base/model.safetensors" ]; then echo "(done: $OUT/base)"; else
  run $PY train.py experiment=demo_stage1 output_dir="$OUT/base" trainer.schedule_steps="$STAGE1_STEPS" \
      overwrite=true "${COMMON[@]}"
fi
BASE=(model.init_checkpoint="$OUT/base/model.safetensors" model.tokenizer.kind=pretrained
      model.tokenizer.path="$OUT/base/tokenizer" data.annotations=data/synthetic/stage2.json
      trainer.schedule_steps="$STAGE2_STEPS" trainer.optimizer.lr="$LR" trainer.save_every=0)

n=0; total=$(( $(echo $ROWS | wc -w) * $(echo $SEEDS | wc -w) ))
for row in $ROWS; do
  for seed in $SEEDS; do
    n=$((n + 1)); dir="$OUT/runs/${row}_s$seed"
    echo "== [$n/$total] $row seed $seed"
    if [ -f "$dir/eval/metrics.json" ]; then echo "(done: $dir)"; continue; fi
    # shellcheck disable=SC2086  # ROW values are space-separated Hydra overrides
    run $PY train.py ${ROW[$row]} seed="$seed" output_dir="$dir" overwrite=true "${BASE[@]}" "${COMMON[@]}"
    run $PY eval.py run="$dir" limit="$EVAL_LIMIT" overwrite=true progress=false "tasks=[$EVAL_TASKS]"
  done
done

echo "== table"
run $PY scripts/mini_table.py "$OUT/runs" --out "$OUT" \
    --command "SEEDS=\"$SEEDS\" STAGE1_STEPS=$STAGE1_STEPS STAGE2_STEPS=$STAGE2_STEPS LR=$LR EVAL_LIMIT=$EVAL_LIMIT ROWS=\"$(echo $ROWS)\" bash scripts/mini_table.sh"
