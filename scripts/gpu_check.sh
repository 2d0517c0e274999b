#!/usr/bin/env bash
# The one GPU check (results/bench/README.md); extra arguments pass through, e.g. --smollm2-dir DIR.
exec "${PYTHON:-python3}" scripts/gpu_check.py --device cuda --out results/bench "$@"
