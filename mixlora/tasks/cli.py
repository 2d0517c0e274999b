"""The evaluation entry point, ``python eval.py ARGS`` = ``python -m mixlora.tasks.cli ARGS``: zero-shot evaluation
of a run (or of the base model) on MME, CV-Bench and the paper's seven sets.

    python eval.py run=RUN_DIR tasks=[mme,cvbench,pope]         # a trained run: base + adapter + projector
    python eval.py run=null model=tiny                          # the freshly built base model, no adapter
    python eval.py run=RUN_DIR decoding=released                # template llava_v1, T=0.2 sampling, 1024 tokens
    python eval.py run=RUN_DIR task.mme.path=data/mme tasks=[mme] limit=4 batch_size=1

Writes OUT/eval/<task>/{predictions.jsonl, settings.json, metrics.json}, OUT/eval/mme/eval_tool/<subtask>.txt,
OUT/eval/metrics.json and OUT/eval/results.md (printed at the end), OUT = output_dir, else the run directory,
else runs/base. An interrupted evaluation resumes: run the same command again. Config: configs/eval.yaml;
formats and options: docs/evaluation.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mixlora.train.config import shipped_config_dir

logger = logging.getLogger("eval")

BASE_OUTPUT = "runs/base"


def ensure_synthetic_suite(root: str | Path, seed: int = 0, **sizes: Any) -> bool:
    """Generate the synthetic suite at ``root`` unless a finished one is there; True if generated here.

    ``mixlora.data.synthetic.ensure_suite``: built in a temporary sibling folder and renamed into place, so a
    concurrent train.py/eval.py never sees a half-written suite; a folder holding anything else is an error
    (``FileExistsError``) and is left as it is. ``sizes``: passed to ``generate_suite`` (per_task, ...).
    """
    from mixlora.data.synthetic import ensure_suite

    return ensure_suite(root, seed=seed, **sizes)


def _strings(node: Any):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def needs_synthetic(cfg: DictConfig) -> bool:
    """Whether a selected task (or the tokenizer corpus of a base model) reads from ``data_root``."""
    root = str(cfg.data_root)
    nodes = [OmegaConf.to_container(cfg.task[name], resolve=True) for name in cfg.tasks]
    if cfg.run is None:
        nodes.append(OmegaConf.to_container(cfg.tokenizer_corpus, resolve=True))
    return any(s == root or s.startswith(root.rstrip("/") + "/") for node in nodes for s in _strings(node))


def check_task_names(cfg: DictConfig) -> None:
    """Every name in ``cfg.tasks`` has a task config and is listed once (TaskError otherwise); run first, since
    reading ``cfg.task[name]`` for an unknown name fails with omegaconf's own error."""
    from mixlora.tasks.common import TaskError

    names = list(cfg.tasks)
    for i, name in enumerate(names):
        if name not in cfg.task:
            raise TaskError(f"tasks lists {name!r}, but there is no task config for it; known: "
                            f"{sorted(cfg.task)} (add configs/task/{name}.yaml and +task=... or fix the name)")
        if name in names[:i]:
            raise TaskError(f"tasks lists {name!r} twice")
    if not names:
        raise TaskError("tasks is empty; name at least one, e.g. tasks=[mme]")


def build_tasks(cfg: DictConfig) -> dict:
    """{name: Task} for ``cfg.tasks``, each instantiated from ``cfg.task[name]`` with ``name=name``."""
    from hydra.utils import instantiate

    check_task_names(cfg)
    return {name: instantiate(cfg.task[name], name=name) for name in cfg.tasks}


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _weights_digest(run: Path) -> str:
    """sha256 (first 16 hex digits) over the weight files of a run directory, in a fixed order."""
    from mixlora.build import RUN_MODEL, RUN_PROJECTOR
    from mixlora.checkpoint import WEIGHTS_NAME, hash_file

    h = hashlib.sha256()
    for name in (WEIGHTS_NAME, RUN_PROJECTOR, RUN_MODEL):
        path = run / name
        if path.is_file():
            h.update(name.encode())
            hash_file(path, h)
    return h.hexdigest()[:16]


def load_stack(cfg: DictConfig):
    """(Stack, source) for ``cfg.run`` (a run directory) or, with run=null, the base model of ``cfg.model``."""
    from mixlora.build import build_stack, build_tokenizer_from_config, load_run
    from mixlora.model.llm import resolve_dtype

    dtype = resolve_dtype(cfg.dtype) if cfg.dtype is not None else None
    if cfg.run is not None:
        stack, run_cfg = load_run(cfg.run, device=cfg.device, dtype=dtype)
        model_cfg = OmegaConf.to_container(run_cfg.model, resolve=True)
        # What the predictions came from: the run's weights, not its path, so a moved or copied run resumes (and a
        # retrained one in the same folder does not mix its answers with the old ones).
        source = {"run_weights": _weights_digest(Path(cfg.run)), "model": model_cfg["builder"]["_target_"]}
        trained = OmegaConf.select(run_cfg, "data.template", default=None)
        if trained is not None and trained != cfg.decoding.template:
            logger.warning("evaluating with template %s, but %s was trained with %s (the released code's mismatch); "
                           "pass decoding.template=%s for matching prompts", cfg.decoding.template, cfg.run, trained,
                           trained)
    else:
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        corpus = list(cfg.tokenizer_corpus) if cfg.model.tokenizer.kind == "local_bpe" else []
        tokenizer = build_tokenizer_from_config(cfg.model.tokenizer, corpus, cache_dir=cfg.tokenizer_cache)
        stack = build_stack(cfg.model, tokenizer)
        stack.model.to(device=cfg.device, **({"dtype": dtype} if dtype is not None else {}))
        source = {"run": None, "model": model_cfg["builder"]["_target_"]}
    source["model_config"] = _digest(model_cfg)
    adapter = getattr(stack.model.llm, "mixlora_adapter_config", None)
    if adapter is None:
        source["adapter"] = "none"
    elif adapter.kind == "lora":  # LoRA has no factor pool or routing: E and decode_routing do not apply
        source["adapter"] = f"lora r={adapter.rank}"
    else:
        source["adapter"] = (f"{adapter.kind} E={adapter.num_factors} r={adapter.rank} "
                             f"decode_routing={adapter.decode_routing}")
    if cfg.decode_routing is not None:
        from mixlora.tasks.evaluate import set_decode_routing

        if set_decode_routing(stack.model, cfg.decode_routing) == 0:
            logger.warning("decode_routing=%s ignored: the model has no MixLoRA layers", cfg.decode_routing)
        source["decode_routing_override"] = cfg.decode_routing
    stack.model.eval()
    return stack, source


def output_dir(cfg: DictConfig) -> Path:
    if cfg.output_dir is not None:
        return Path(cfg.output_dir)
    return Path(cfg.run) if cfg.run is not None else Path(BASE_OUTPUT)


def run_eval(cfg: DictConfig) -> dict:
    """Everything ``python eval.py`` does, for a composed config; returns the summary (eval/metrics.json)."""
    from mixlora.tasks.evaluate import (Decoding, check_progress_interval, check_task_definitions, evaluate,
                                        load_examples, resolve_task_definitions)
    from mixlora.options import check_choice
    from mixlora.scoring.aggregate import POPE_METRICS
    from mixlora.progress import resolve_progress
    from mixlora.runlock import run_lock
    from mixlora.tasks.common import TaskError

    check_choice("pope_metric", cfg.pope_metric, POPE_METRICS)
    try:  # checked before any data or model is touched
        progress = resolve_progress(cfg.progress)
        every_s = check_progress_interval(cfg.progress_every_s)
    except ValueError as err:
        raise TaskError(str(err)) from err
    check_task_names(cfg)
    if cfg.synthetic.generate_if_missing and needs_synthetic(cfg):
        ensure_synthetic_suite(cfg.data_root, seed=int(cfg.synthetic.seed), progress=progress == "bar")
    tasks = build_tasks(cfg)
    decoding = Decoding.coerce(cfg.decoding)
    examples = load_examples(tasks, cfg.limit, decoding)  # data errors surface before the model is loaded
    # Task routing: each set's definition, checked before the model is loaded too.
    definitions = resolve_task_definitions(cfg.task_definitions, cfg.run)
    if definitions is not None:
        check_task_definitions(tasks, examples, definitions)
    out = output_dir(cfg)
    if cfg.run is not None and not Path(cfg.run).is_dir():  # checked here: the lock below would create it
        raise FileNotFoundError(f"run={cfg.run}: no such directory (pass the output_dir of a finished training run)")
    # One eval.py per output: two would both append every prediction to the same predictions.jsonl. Taken before
    # the model is loaded, so a second process stops in seconds, and held until the last file is written.
    with run_lock(out / "eval", what="eval"):
        stack, source = load_stack(cfg)
        try:
            summary = evaluate(stack, tasks, out, decoding, batch_size=int(cfg.batch_size), limit=cfg.limit,
                               overwrite=bool(cfg.overwrite), device=cfg.device, pope_metric=cfg.pope_metric,
                               source=source, progress=progress, examples=examples, definitions=definitions,
                               progress_every_s=every_s)
        finally:
            if stack.model.feature_cache is not None:  # features computed so far serve the next evaluation
                stack.model.feature_cache.flush()
    logger.info("wrote %s", out / "eval")
    return summary


@hydra.main(version_base=None, config_path=str(shipped_config_dir()), config_name="eval")
def main(cfg: DictConfig) -> None:
    from mixlora.build import UntrustedConfigError
    from mixlora.data.dataset import DataError
    from mixlora.runlock import FolderLockedError
    from mixlora.tasks.common import TaskError
    from mixlora.tasks.report import results_markdown

    try:
        summary = run_eval(cfg)
    except (TaskError, FolderLockedError, UntrustedConfigError, DataError, FileNotFoundError, FileExistsError) as err:
        # Data and path problems: one clear line instead of a traceback (the message names file, line and fix).
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(results_markdown(summary))


if __name__ == "__main__":
    main()
