#!/usr/bin/env bash
# Grids of rank x factors x variant as Hydra multiruns, then eval and aggregate.
#   bash scripts/sweep.sh OUT [train overrides ...] [-- eval overrides ...] [options]
# is `python -m mixlora.tables sweep ...` (--help: every option; docs/reproduce.md), with options not given read
# from the environment: VARIANTS, FACTORS, RANKS,
# LORA_RANKS, ALPHA, BASE, LAUNCHER, EVAL=0, RESULTS, DRY_RUN=1, EVAL_DEVICE (PY: the interpreter).
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m mixlora.tables sweep --from-env "$@"
