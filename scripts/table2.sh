#!/usr/bin/env bash
# Table 2 of the paper (seen tasks, results/paper/table2.csv).
#   bash scripts/table2.sh OUT [train overrides ...] [-- eval overrides ...] [options]
# is `python -m mixlora.tables table2 ...` (--help: every option; docs/reproduce.md), with options not given read
# from the environment: ROWS, DRY_RUN=1, KEEP_GOING=1, NPROC, RESULTS, EVAL_DEVICE, TORCHRUN, LAUNCHER,
# SEEN_EVAL, SEEN_TASKS (PY: the interpreter, default .venv/bin/python).
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m mixlora.tables table2 --from-env "$@"
