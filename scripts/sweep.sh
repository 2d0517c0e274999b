#!/usr/bin/env bash
# Grids of rank x factors x variant as one Hydra multirun (`train.py --multirun`), locally or on SLURM, then
# eval.py on every job and scripts/aggregate.py over them.
#
#   bash scripts/sweep.sh OUT [train overrides ...] [-- eval overrides ...]
#
# The multirun it launches (printed first; DRY_RUN=1 prints the commands only), with the defaults below:
#   python train.py --multirun experiment=paper_base adapter=mixlora_released,mixlora adapter.num_factors=16,32 \
#     adapter.rank=2,4,8 'adapter.alpha="${mul:2,${adapter.num_factors}}"' resume=true hydra.sweep.dir=OUT \
#     'hydra.sweep.subdir=${hydra:runtime.choices.adapter}_e${adapter.num_factors}_r${adapter.rank}' [overrides]
# so every grid point gets its own run directory, e.g. OUT/mixlora_released_e16_r4 (as released) and
# OUT/mixlora_e16_r4 (corrected); LoRA points go to OUT/lora_r<r>.
#
# Environment:
#   VARIANTS=released,corrected   any of released (adapter=mixlora_released), corrected (adapter=mixlora) and
#                                 lora (adapter=lora: a second multirun over LORA_RANKS, alpha = 2r)
#   FACTORS=16,32  RANKS=2,4,8    MixLoRA's E and r values (every r must be below every E)
#   LORA_RANKS=2,4,8,16,32        LoRA's r values
#   ALPHA=2E                      MixLoRA's alpha: 2E (as released, for both variants) or 2r (LoRA's multiplier 2)
#   BASE=paper_base               the experiment every job starts from (the paper's setup)
#   LAUNCHER=local                local: Hydra's basic launcher, the jobs one after another in one process each
#                                 (trainer=single, or one-process ZeRO; for several GPUs per job use SLURM or the
#                                 table scripts). slurm: hydra/launcher=slurm (configs/hydra/launcher/slurm.yaml):
#                                 one SLURM job per grid point, 4 tasks (= GPUs) each, through submitit; Hydra
#                                 waits until every job has finished. Set the partition etc. with overrides, e.g.
#                                 hydra.launcher.partition=gpu hydra.launcher.account=... submitit: the same
#                                 pickled jobs as real processes on this machine (hydra/launcher=local), side by side
#   EVAL=1                        evaluate every job afterwards (eval.py run=OUT/<job> device=$EVAL_DEVICE) and
#                                 aggregate into RESULTS (default OUT/results); EVAL=0: train only
#   DRY_RUN, EVAL_DEVICE, PY      as for the table scripts (scripts/table_lib.sh)
#
# Examples:
#   LAUNCHER=slurm bash scripts/sweep.sh runs/sweep model.paths.llm=/ckpt/vicuna-7b-v1.3 \
#     model.paths.vision=/ckpt/clip-vit-large-patch14 model.paths.projector=/ckpt/llava-v1-pretrain/mm_projector.bin \
#     data.image_folder=/data/images_191task_1k hydra.launcher.partition=gpu -- task.mme.path=/data/mme
#   FACTORS=8 RANKS=2,4 VARIANTS=released,corrected,lora LORA_RANKS=2,4 bash scripts/sweep.sh runs/sweep_tiny \
#     model=tiny data=synthetic trainer=single trainer.max_steps=20 -- limit=4        # CPU, tiny stack
# More: docs/reproduce.md.
source "$(dirname "$0")/table_lib.sh"

table_parse "$@"
RESULTS=$(realpath -m "${RESULTS:-$OUT/results}")
table_settings
VARIANTS=${VARIANTS:-released,corrected}
FACTORS=${FACTORS:-16,32}
RANKS=${RANKS:-2,4,8}
LORA_RANKS=${LORA_RANKS:-2,4,8,16,32}
ALPHA=${ALPHA:-2E}
BASE=${BASE:-paper_base}
LAUNCHER=${LAUNCHER:-local}
EVAL=${EVAL:-1}

list_of_ints() {  # NAME VALUE: a comma-separated list of positive integers
  [[ $2 =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || table_die "$1 must be a comma-separated list of positive integers, got '$2'"
}
list_of_ints FACTORS "$FACTORS"
list_of_ints RANKS "$RANKS"
list_of_ints LORA_RANKS "$LORA_RANKS"
[[ $EVAL =~ ^[01]$ ]] || table_die "EVAL must be 0 or 1, got '$EVAL'"
case "$ALPHA" in
  # Quoted for Hydra: the comma would otherwise split the value into sweep points; OmegaConf still resolves it.
  2E) ALPHA_OVERRIDE='adapter.alpha="${mul:2,${adapter.num_factors}}"' ;;
  2r) ALPHA_OVERRIDE='adapter.alpha="${mul:2,${adapter.rank}}"' ;;
  *) table_die "ALPHA must be 2E (as released) or 2r (LoRA's multiplier), got '$ALPHA'" ;;
esac
case "$LAUNCHER" in
  local) LAUNCHER_OVERRIDES=() ;;
  slurm) LAUNCHER_OVERRIDES=(hydra/launcher=slurm) ;;
  submitit) LAUNCHER_OVERRIDES=(hydra/launcher=local) ;;
  *) table_die "LAUNCHER must be local, submitit or slurm, got '$LAUNCHER'" ;;
esac
MIXLORA_ADAPTERS=()
WITH_LORA=0
IFS=', ' read -r -a variant_list <<< "$VARIANTS"
for variant in "${variant_list[@]}"; do
  case "$variant" in
    released) MIXLORA_ADAPTERS+=(mixlora_released) ;;
    corrected) MIXLORA_ADAPTERS+=(mixlora) ;;
    lora) WITH_LORA=1 ;;
    *) table_die "VARIANTS: '$variant' is not one of released, corrected, lora" ;;
  esac
done
[ ${#MIXLORA_ADAPTERS[@]} -gt 0 ] || [ "$WITH_LORA" = 1 ] || table_die "VARIANTS is empty; name released, corrected and/or lora"
IFS=, read -r -a factor_list <<< "$FACTORS"
IFS=, read -r -a rank_list <<< "$RANKS"
if [ ${#MIXLORA_ADAPTERS[@]} -gt 0 ]; then
  for E in "${factor_list[@]}"; do
    for r in "${rank_list[@]}"; do
      [ "$r" -lt "$E" ] || table_die "RANKS has r=$r, not below FACTORS' E=$E: MixLoRA selects r of its E factors"
    done
  done
fi
if [ "$LAUNCHER" != local ] && [ "$DRY_RUN" = 0 ] && ! "$PY" -c "import hydra_plugins.hydra_submitit_launcher" 2> /dev/null; then
  table_die "LAUNCHER=$LAUNCHER needs the Hydra submitit plugin (requirements.txt): pip install hydra-submitit-launcher==1.2.0 submitit==1.5.4"
fi

# train.py runs under Hydra's launcher here, never under torchrun: one process per job (SLURM starts its tasks).
TRAIN=("$PY" train.py --multirun "experiment=$BASE" resume=true "hydra.sweep.dir=$OUT"
       ${LAUNCHER_OVERRIDES[@]+"${LAUNCHER_OVERRIDES[@]}"})
JOBS=()
if [ ${#MIXLORA_ADAPTERS[@]} -gt 0 ]; then
  adapters=$(IFS=,; echo "${MIXLORA_ADAPTERS[*]}")
  table_run "train (MixLoRA grid)" "${TRAIN[@]}" "adapter=$adapters" "adapter.num_factors=$FACTORS" \
    "adapter.rank=$RANKS" "$ALPHA_OVERRIDE" \
    'hydra.sweep.subdir=${hydra:runtime.choices.adapter}_e${adapter.num_factors}_r${adapter.rank}' \
    ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}
  for adapter in "${MIXLORA_ADAPTERS[@]}"; do
    for E in "${factor_list[@]}"; do
      for r in "${rank_list[@]}"; do JOBS+=("${adapter}_e${E}_r${r}"); done
    done
  done
fi
if [ "$WITH_LORA" = 1 ]; then
  table_run "train (LoRA grid)" "${TRAIN[@]}" adapter=lora "adapter.rank=$LORA_RANKS" \
    'hydra.sweep.subdir=lora_r${adapter.rank}' ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}
  IFS=, read -r -a lora_rank_list <<< "$LORA_RANKS"
  for r in "${lora_rank_list[@]}"; do JOBS+=("lora_r$r"); done
fi
[ "$EVAL" = 1 ] || exit 0
RUNS=()
for job in "${JOBS[@]}"; do
  table_run "[$job] eval" "$PY" eval.py "run=$OUT/$job" "device=$EVAL_DEVICE" ${EVAL_ARGS[@]+"${EVAL_ARGS[@]}"}
  RUNS+=("$OUT/$job")
done
table_run "aggregate" "$PY" scripts/aggregate.py "${RUNS[@]}" --out "$RESULTS"
