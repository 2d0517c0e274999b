# Shared driver of the paper-table scripts (sourced by scripts/table1.sh, table_cfs.sh, table_routing.sh,
# table2.sh; not run on its own). Each table script lists its rows (configs/experiment/<row>.yaml) and calls
# `table_main "$@"`. For every selected row, in order:
#
#   1. train:  $TORCHRUN --standalone --nproc_per_node $NPROC train.py experiment=ROW output_dir=OUT/ROW resume=true
#              [train overrides]          (one plain `$PY train.py ...` process when the overrides hold trainer=single:
#                                          the single-process trainer refuses multi-process launches)
#              A row whose OUT/ROW/run.json says "finished" is not trained again; any other run there is continued
#              (resume=true: from its last checkpoint, or from step 0), so a killed table script is simply re-run,
#              and tables sharing one OUT share the rows they have in common (e.g. table_cfs.sh reuses table1.sh's
#              IFS+CFS rows).
#   2. eval:   $PY eval.py run=OUT/ROW device=$EVAL_DEVICE [table's eval overrides] [eval overrides]
#              (eval.py resumes its own predictions.)
#   3. then, once: $PY scripts/aggregate.py OUT/ROW ... --out $RESULTS   (table2.sh: scripts/table2_aggregate.py)
#
# Arguments:  OUT [train overrides ...] [-- eval overrides ...]
#   OUT                 the folder of the run directories (OUT/<row>/), resolved from the calling directory
#   train overrides     passed to every train.py call, after the row's own (e.g. model=tiny data=synthetic
#                       trainer=single trainer.max_steps=1, or model.paths.llm=/ckpt/vicuna-7b-v1.3 ...)
#   eval overrides      after a literal `--`: passed to every eval.py call (e.g. limit=2 tasks=[mme,pope],
#                       task.mme.path=/data/mme)
# train.py and eval.py run from the repository root, so relative paths inside overrides are relative to it.
#
# Environment:
#   NPROC=4             processes (GPUs) per training run
#   ROWS=               rows to run: names or shell patterns, separated by spaces or commas (e.g. ROWS='t1_lora_*');
#                       every pattern must match a row of the table. Default: every row, in the table's order.
#   DRY_RUN=1           print the commands (one `[row] train:` and one `[row] eval:` line per row, then
#                       `aggregate:`) without running anything
#   KEEP_GOING=1        go on with the next row when one fails, aggregate the rows that worked, exit 1 at the end
#   RESULTS=results/<table>   where the aggregated table goes (resolved from the calling directory)
#   EVAL_DEVICE         eval.py's device: cuda when `nvidia-smi -L` works, else cpu
#   PY                  the Python interpreter (.venv/bin/python when present, else python)
#   TORCHRUN            the multi-process launcher ("$PY -m torch.distributed.run", i.e. torchrun)

set -euo pipefail

table_die() {
  echo "$(basename "$0"): error: $*" >&2
  exit 2
}

table_usage() {
  # The calling script's header comment (everything before its first command).
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

# Split "OUT [train overrides] [-- eval overrides]" into OUT, TRAIN_ARGS and EVAL_ARGS.
table_parse() {
  if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    table_usage
    [ $# -ge 1 ] && exit 0
    table_die "missing OUT, the folder for the run directories (usage above)"
  fi
  case "$1" in
    -*|*=*) table_die "the first argument must be OUT, the folder for the run directories; got '$1' (e.g. $(basename "$0") runs/paper $1)" ;;
  esac
  OUT=$(realpath -m "$1")
  shift
  TRAIN_ARGS=()
  EVAL_ARGS=()
  local after_separator=0 arg
  for arg in "$@"; do
    if [ "$after_separator" = 0 ] && [ "$arg" = "--" ]; then
      after_separator=1
    elif [ "$after_separator" = 0 ]; then
      TRAIN_ARGS+=("$arg")
    else
      EVAL_ARGS+=("$arg")
    fi
  done
}

# SELECTED = the rows of ROW_LIST that ROWS names (all of them when ROWS is empty), in ROW_LIST's order.
table_select() {
  SELECTED=()
  if [ -z "${ROWS:-}" ]; then
    SELECTED=("${ROW_LIST[@]}")
    return
  fi
  local patterns pattern row hit
  IFS=', ' read -r -a patterns <<< "$ROWS"
  for pattern in "${patterns[@]}"; do
    hit=0
    for row in "${ROW_LIST[@]}"; do
      # shellcheck disable=SC2053  # $pattern unquoted on purpose: shell-pattern match
      [[ $row == $pattern ]] && hit=1
    done
    [ "$hit" = 1 ] || table_die "ROWS: '$pattern' matches no row of $TABLE; its rows: ${ROW_LIST[*]}"
  done
  for row in "${ROW_LIST[@]}"; do
    for pattern in "${patterns[@]}"; do
      if [[ $row == $pattern ]]; then
        SELECTED+=("$row")
        break
      fi
    done
  done
}

table_settings() {
  cd "$(dirname "$0")/.."
  if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
  fi
  NPROC=${NPROC:-4}
  [[ $NPROC =~ ^[1-9][0-9]*$ ]] || table_die "NPROC must be a positive integer (processes per run), got '$NPROC'"
  TORCHRUN=${TORCHRUN:-"$PY -m torch.distributed.run"}
  DRY_RUN=${DRY_RUN:-0}
  KEEP_GOING=${KEEP_GOING:-0}
  for flag in DRY_RUN KEEP_GOING; do
    [[ ${!flag} =~ ^[01]$ ]] || table_die "$flag must be 0 or 1, got '${!flag}'"
  done
  if [ -z "${EVAL_DEVICE:-}" ]; then
    if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then EVAL_DEVICE=cuda; else EVAL_DEVICE=cpu; fi
  fi
  local single=0 arg launcher
  for arg in "${TRAIN_ARGS[@]}"; do
    [ "$arg" = "trainer=single" ] && single=1
  done
  if [ "$single" = 1 ]; then
    LAUNCH=("$PY" train.py)
  else
    read -r -a launcher <<< "$TORCHRUN"
    LAUNCH=("${launcher[@]}" --standalone --nproc_per_node "$NPROC" train.py)
  fi
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
}

# Print a command (shell-quoted, so it can be pasted), then run it unless DRY_RUN=1; returns its status.
table_run() {
  local tag=$1
  shift
  local quoted
  quoted=$(printf '%q ' "$@")
  echo "$tag: ${quoted% }"
  [ "$DRY_RUN" = 1 ] && return 0
  "$@"
}

# Hooks a table script may redefine: per-row extra overrides (ROW_TRAIN / ROW_EVAL arrays).
table_row_train_args() { ROW_TRAIN=(); }
table_row_eval_args() { ROW_EVAL=(); }

table_row() {
  local row=$1 run="$OUT/$1"
  table_row_train_args "$row"
  table_row_eval_args "$row"
  if [ -f "$run/run.json" ] && grep -q '"status": "finished"' "$run/run.json"; then
    echo "[$row] train: skipped, $run holds a finished run"
  else
    table_run "[$row] train" "${LAUNCH[@]}" "experiment=$row" "output_dir=$run" resume=true \
      ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"} ${ROW_TRAIN[@]+"${ROW_TRAIN[@]}"} || return $?
  fi
  table_run "[$row] eval" "$PY" eval.py "run=$run" "device=$EVAL_DEVICE" ${ROW_EVAL[@]+"${ROW_EVAL[@]}"} \
    ${EVAL_ARGS[@]+"${EVAL_ARGS[@]}"}
}

# Aggregation command (default: scripts/aggregate.py); a table script may redefine it. Args: run directories.
table_aggregate() {
  table_run "aggregate" "$PY" scripts/aggregate.py "$@" --out "$RESULTS"
}

table_main() {
  table_parse "$@"
  RESULTS=$(realpath -m "${RESULTS:-results/$TABLE}")
  table_settings
  table_select
  [ "$(type -t table_check)" = function ] && table_check
  echo "== $TABLE: ${#SELECTED[@]} row(s) into $OUT; results in $RESULTS$([ "$DRY_RUN" = 1 ] && echo ' (dry run)')"
  local row status done_runs=() failed=()
  for row in "${SELECTED[@]}"; do
    status=0
    table_row "$row" || status=$?
    if [ "$status" = 0 ]; then
      done_runs+=("$OUT/$row")
    else
      failed+=("$row")
      echo "[$row] failed (exit status $status)" >&2
      [ "$KEEP_GOING" = 1 ] || exit "$status"
    fi
  done
  if [ ${#done_runs[@]} -gt 0 ]; then
    table_aggregate "${done_runs[@]}"
  fi
  if [ ${#failed[@]} -gt 0 ]; then
    echo "$(basename "$0"): ${#failed[@]} row(s) failed: ${failed[*]}" >&2
    exit 1
  fi
}
