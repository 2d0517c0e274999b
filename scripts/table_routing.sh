#!/usr/bin/env bash
# The routing ablation (MME with instance / task / random routing, results/paper/routing_ablation.csv).
#   bash scripts/table_routing.sh OUT [train overrides ...] [-- eval overrides ...] [options]
# is `python -m mixlora.tables routing ...` (--help: every option; docs/reproduce.md), with options not given read
# from the environment: ROWS, DRY_RUN=1, KEEP_GOING=1, NPROC, RESULTS, EVAL_DEVICE, TORCHRUN, LAUNCHER,
# TASK_DEFINITIONS (PY: the interpreter, default .venv/bin/python).
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m mixlora.tables routing --from-env "$@"
