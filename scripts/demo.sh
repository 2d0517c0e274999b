#!/usr/bin/env bash
# The README's main job (`make demo`): the interference testbed's reduced table on CPU (2.5-4 minutes on 2 idle
# cores). Everything is in `python -m mixlora.testbed demo` (docs/testbed.md); this wrapper only picks the venv.
#   bash scripts/demo.sh [OUT_DIR]          (default runs/demo; env PY, WORKERS: runs at a time, default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${PY:-.venv/bin/python}" -m mixlora.testbed demo "${1:-runs/demo}" --workers "${WORKERS:-2}"
