#!/usr/bin/env bash
# Table 2 of the paper (seen tasks: accuracy on held-out instances of six Vision-Flan training tasks,
# results/paper/table2.csv): train, evaluate on the seen tasks, aggregate.
#
#   SEEN_EVAL=DIR bash scripts/table2.sh OUT [train overrides ...] [-- eval overrides ...]
#
# Rows (configs/experiment/<row>.yaml):
#   t2_lora_specialist_r{4,16}_{scienceqa,coco,fairface,inaturalist,stvqa,pacs}
#       LoRA_Specialist: one LoRA per seen task, trained on that task alone (data.tasks), scored on it alone
#   t1_lora_r4, t1_lora_r16, t1_mixlora_e16_r4 (as released), t1c_mixlora_e16_r4 (corrected)
#       the multi-task models of Table 1, scored on all six (reused when OUT is scripts/table1.sh's)
#
# SEEN_EVAL (required): a folder with scienceqa.jsonl, coco.jsonl, fairface.jsonl, inaturalist.jsonl, stvqa.jsonl
#   and pacs.jsonl: held-out instances of each seen task in the released evaluation format, one JSON object per
#   line {"unique_id", "prompt", "target", "image_path"} (image_path relative to the file's folder). They are
#   scored like the classification sets (mixlora.tasks.classification.ClassificationTask: option letter, then
#   normalised equality, then a whole-word label match), prompts as trained (no answer-format suffix). The
#   results go to OUT/<row>/seen/eval/, next to (not over) a Table 1 evaluation in OUT/<row>/eval/.
# SEEN_TASKS (optional): which training tasks each specialist trains on, overriding the configs' Vision-Flan
#   names, as space-separated KEY=PATTERN[,PATTERN...] (shell patterns on task_name, case-insensitive), e.g. on
#   the synthetic suite: SEEN_TASKS='scienceqa=SynthGlyphs+arithmetic coco=SynthCaptions+image_captioning ...'
#
#   SEEN_EVAL=/data/seen bash scripts/table2.sh runs/paper model.paths.llm=/ckpt/vicuna-7b-v1.3 \
#     model.paths.vision=/ckpt/clip-vit-large-patch14 model.paths.projector=/ckpt/llava-v1-pretrain/mm_projector.bin \
#     data.image_folder=/data/images_191task_1k
# Options and environment (NPROC, ROWS, DRY_RUN, KEEP_GOING, RESULTS, EVAL_DEVICE, PY): scripts/table_lib.sh,
# docs/reproduce.md (which also shows a CPU smoke run on the tiny stack and the synthetic suite).
source "$(dirname "$0")/table_lib.sh"
TABLE=table2
SEEN_KEYS=(scienceqa coco fairface inaturalist stvqa pacs)
ROW_LIST=()
for rank in 4 16; do
  for key in "${SEEN_KEYS[@]}"; do ROW_LIST+=("t2_lora_specialist_r${rank}_$key"); done
done
ROW_LIST+=(t1_lora_r4 t1_lora_r16 t1_mixlora_e16_r4 t1c_mixlora_e16_r4)
# Resolved from the calling directory (table_main moves to the repository root).
[ -n "${SEEN_EVAL:-}" ] && SEEN_EVAL=$(realpath -m "$SEEN_EVAL")
declare -A SEEN_PATTERNS=()

# The seen task a specialist row is trained and scored on ("" for the multi-task rows).
seen_key() {
  case "$1" in
    t2_lora_specialist_r*_*) echo "${1##*_}" ;;
    *) echo "" ;;
  esac
}

table_check() {
  [ -n "${SEEN_EVAL:-}" ] || table_die "SEEN_EVAL is not set: point it at a folder with ${SEEN_KEYS[*]/%/.jsonl} (held-out instances of the seen tasks in the released evaluation format; see this script's header)"
  local row key needed=()
  for row in "${SELECTED[@]}"; do
    key=$(seen_key "$row")
    if [ -n "$key" ]; then needed+=("$key"); else needed+=("${SEEN_KEYS[@]}"); fi
  done
  for key in $(printf '%s\n' "${needed[@]}" | sort -u); do
    [ -f "$SEEN_EVAL/$key.jsonl" ] || table_die "SEEN_EVAL=$SEEN_EVAL has no $key.jsonl (held-out $key instances, one {\"unique_id\", \"prompt\", \"target\", \"image_path\"} per line)"
  done
  local entry patterns
  for entry in ${SEEN_TASKS:-}; do
    key=${entry%%=*}
    patterns=${entry#*=}
    [[ $entry == *=* && -n $patterns ]] || table_die "SEEN_TASKS entry '$entry' is not KEY=PATTERN[,PATTERN...]"
    [[ " ${SEEN_KEYS[*]} " == *" $key "* ]] || table_die "SEEN_TASKS key '$key' is not a seen task; keys: ${SEEN_KEYS[*]}"
    [[ $patterns != *"'"* ]] || table_die "SEEN_TASKS pattern '$patterns' contains a quote"
    SEEN_PATTERNS[$key]=$patterns
  done
}

table_row_train_args() {
  ROW_TRAIN=()
  local key patterns
  key=$(seen_key "$1")
  if [ -n "$key" ] && [ -n "${SEEN_PATTERNS[$key]:-}" ]; then
    # Each pattern quoted for Hydra: '+', '*' and '[' are override syntax otherwise.
    patterns="'${SEEN_PATTERNS[$key]//,/\',\'}'"
    ROW_TRAIN=("data.tasks=[$patterns]")
  fi
}

table_row_eval_args() {
  local key keys names=()
  key=$(seen_key "$1")
  if [ -n "$key" ]; then keys=("$key"); else keys=("${SEEN_KEYS[@]}"); fi
  ROW_EVAL=()
  for key in "${keys[@]}"; do
    ROW_EVAL+=("+task.seen_$key._target_=mixlora.tasks.classification.ClassificationTask"
               "+task.seen_$key.path=$SEEN_EVAL/$key.jsonl" "+task.seen_$key.prompt_suffix=''")
    names+=("seen_$key")
  done
  local IFS=,
  ROW_EVAL+=("tasks=[${names[*]}]" "output_dir=$OUT/$1/seen")
}

table_aggregate() {
  table_run "aggregate" "$PY" scripts/table2_aggregate.py "$@" --out "$RESULTS"
}

table_main "$@"
