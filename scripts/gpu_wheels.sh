#!/usr/bin/env bash
# Wheels for scripts/gpu_check.py on a GPU machine that has Python 3.12 with torch, transformers, accelerate, peft,
# safetensors, tokenizers, numpy and tqdm but not the rest (results/bench/README.md). Run from the repository
# root with the project's virtualenv; writes .whl/ (git-ignored). Versions: requirements.txt's pins, and for its
# unpinned entries and the dependencies, the versions of the tested virtualenv.
# Default set (~13 MB): sections a-c, and d's hydra/pillow. --with-datasets adds what section d's train.py/eval.py
# read their data with (datasets + pyarrow + pandas, ~66 MB more: pyarrow alone is 55 MB).
#   there: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#          export PYTHONPATH=/tmp/site
set -euo pipefail
PY=${PY:-.venv/bin/python}
get() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$@"
}
mkdir -p .whl
get hydra-core==1.3.8
get omegaconf==2.3.1
# hydra-core needs antlr4 4.9.*, published as a source archive only: build its (pure-Python) wheel
"$PY" -m pip wheel -q --no-deps --no-build-isolation antlr4-python3-runtime==4.9.3 -w .whl
get pillow==13.0.0
# deepspeed's own dependencies (torch, numpy, packaging, psutil, tqdm are there already)
get hjson==3.1.0
get pydantic==2.14.4
get pydantic-core==2.50.5
get annotated-types==0.8.0
get typing-inspection==0.4.5
get typing-extensions==4.16.0
get msgpack==1.2.4
get einops==0.8.2
get py-cpuinfo==9.0.0
get ninja==1.13.2
# deepspeed is published as a source archive only: build a pure-Python wheel here (no CUDA op compiled; the check
# uses torch's AdamW, so none is needed there)
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl
if [ "${1:-}" = "--with-datasets" ]; then
  get datasets==5.2.0
  get pyarrow==26.0.1
  get pandas==3.1.1
  get dill==0.4.1
  get multiprocess==0.70.19
  get xxhash==4.1.0
  get python-dateutil==4.0.0
  get six==1.17.0
elif [ -n "${1:-}" ]; then
  echo "gpu_wheels.sh: unknown argument $1 (the only option is --with-datasets)" >&2
  exit 2
fi
ls -l .whl/*.whl
du -ch .whl/*.whl | tail -1
