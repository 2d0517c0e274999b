#!/usr/bin/env bash
# CPU mini-reproduction (the README's main job, `make demo`): on 2 idle CPU cores, about 4.5 minutes.
#
#   1. the synthetic suite (data/synthetic/, generated once) and its split into a stage-1 base mix and a
#      disjoint stage-2 set (mixlora.data.base_mix)
#   2. stage 1: full training of the tiny stack on captions + 50 records per task -> the base model (stands in
#      for the instruction-following Vicuna with a stage-one projector)
#   3. stage 2: LoRA r=4 and corrected MixLoRA E=8, r=4 (equal rank, equal multiplier alpha/r = 2) on the other
#      100 records of each of the 28 training tasks, each starting from the stage-1 base
#   4. evaluation of the base, LoRA and MixLoRA: zero-shot on the held-out MME-, CV-Bench-, POPE-, TextVQA-,
#      VSR-, SNLI-VE-, CIFAR- and MNIST-shaped sets with the official scorers, and on fresh instances of the
#      training tasks (seen tasks, Table 2's analogue)
#   5. one table (runs/demo/results.md) and plots (runs/demo/plots/)
#
# Usage: bash scripts/demo.sh [OUT_DIR]      (env: PY, STAGE1_STEPS, STAGE2_STEPS, LR, EVAL_LIMIT)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=$(realpath -m "${1:-runs/demo}")
STAGE1_STEPS=${STAGE1_STEPS:-1000}
STAGE2_STEPS=${STAGE2_STEPS:-500}
LR=${LR:-5e-3}
EVAL_LIMIT=${EVAL_LIMIT:-null}
EVAL_TASKS=mme,cvbench,pope,textvqa,vsr,snli_ve,cifar10,cifar100,mnist,seen
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(logger=disabled overwrite=true trainer.progress_bar=false)

echo "== 1/5 synthetic suite"
[ -f data/synthetic/manifest.json ] || $PY data/make_synthetic.py --out data/synthetic --seed 0 --quiet
[ -f data/synthetic/eval/seen/test.jsonl ] || $PY -m mixlora.data.seen --suite data/synthetic --quiet  # older suites
$PY -m mixlora.data.base_mix --suite data/synthetic

echo "== 2/5 stage 1: base model ($STAGE1_STEPS steps, full training on the base mix)"
$PY train.py experiment=demo_stage1 output_dir="$OUT/base" trainer.schedule_steps="$STAGE1_STEPS" "${COMMON[@]}"

BASE=(model.init_checkpoint="$OUT/base/model.safetensors" model.tokenizer.kind=pretrained
      model.tokenizer.path="$OUT/base/tokenizer" data.annotations=data/synthetic/stage2.json
      trainer.schedule_steps="$STAGE2_STEPS" trainer.optimizer.lr="$LR")
for exp in tiny_lora_r4 tiny_mixlora_e8_r4; do
  echo "== 3/5 stage 2: $exp ($STAGE2_STEPS steps)"
  $PY train.py experiment="$exp" output_dir="$OUT/$exp" "${BASE[@]}" "${COMMON[@]}"
done

for run in base tiny_lora_r4 tiny_mixlora_e8_r4; do
  echo "== 4/5 zero-shot evaluation: $run"
  $PY eval.py run="$OUT/$run" limit="$EVAL_LIMIT" overwrite=true "tasks=[$EVAL_TASKS]" > "$OUT/$run.eval.log" 2>&1 || { tail -20 "$OUT/$run.eval.log"; exit 1; }
done

echo "== 5/5 table and plots"
$PY scripts/aggregate.py "$OUT/base" "$OUT/tiny_lora_r4" "$OUT/tiny_mixlora_e8_r4" --out "$OUT"
