#!/usr/bin/env bash
# The testbed's full table (every row, 3-5 seeds), resumable:
#   bash scripts/mini_table.sh [OUT_DIR]                         (default runs/mini)
#   ROWS="lora_r2 mixc_e8_r2_instr" SEEDS="0 1" bash scripts/mini_table.sh runs/mini_small
#   DRY_RUN=1 bash scripts/mini_table.sh                          (list the runs only)
# Env: PY, ROWS, SEEDS, WORKERS (runs at a time, default 2: one per core of a 2-core machine),
# KEEP_GOING=1, DEST (report folder, default OUT_DIR). The logic is in
# `python -m mixlora.testbed table` (docs/testbed.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${1:-runs/mini}
args=(table "$OUT" --stem mini_table --workers "${WORKERS:-2}")
# shellcheck disable=SC2206  # ROWS and SEEDS are space-separated lists
[ -n "${ROWS:-}" ] && args+=(--rows $ROWS)
# shellcheck disable=SC2206
[ -n "${SEEDS:-}" ] && args+=(--seeds $SEEDS)
[ -n "${KEEP_GOING:-}" ] && args+=(--keep-going)
[ -n "${DRY_RUN:-}" ] && args+=(--dry-run)
[ -n "${DEST:-}" ] && args+=(--dest "$DEST")
exec "${PY:-.venv/bin/python}" -m mixlora.testbed "${args[@]}"
