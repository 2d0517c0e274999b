"""Analyses of trained (or fresh) adapters: task interference (docs/method.md#task-interference) and routing
(docs/method.md#routing-analysis).

Submodules:
    ``mixlora.analysis.interference``  gradient-based task-interference matrices for LoRA A / B
    ``mixlora.analysis.routing``       factor usage, entropy, Jaccard t-SNE of MixLoRA selections

This module holds what both analyses (and their scripts) share: the model under analysis (a run directory or
a fresh stack from a model config), the per-task seeded samples of a Vision-Flan-style JSON, and the held-out
sets of the synthetic suite. See docs/analysis.md.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Optional, Sequence

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIG_DIR = REPO_ROOT / "configs" / "model"
MIXLORA_VARIANTS = ("corrected", "released")


# ---------------------------------------------------------------------------------------------- training records
def load_records(path: str | Path) -> list[dict]:
    """The JSON list of a Vision-Flan/LLaVA annotation file, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist (generate the synthetic suite with "
                                "`python data/make_synthetic.py --out data/synthetic --seed 0`, or fix --data)")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected a JSON list of Vision-Flan records") from err
    if not isinstance(records, list):
        raise ValueError(f"{path}: holds a {type(records).__name__}; expected a JSON list of Vision-Flan records")
    return records


def records_by_task(records: Sequence[dict], source: str = "annotations") -> dict[str, list[int]]:
    """{task_name: [positions in ``records``]} in file order; a record without ``task_name`` is an error."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        task = record.get("task_name") if isinstance(record, dict) else None
        if not isinstance(task, str) or not task:
            raise ValueError(f"{source}: record {i} has no 'task_name'; the analyses group records by task, so "
                             "every record needs one (Vision-Flan format, docs/data.md)")
        groups.setdefault(task, []).append(i)
    return groups


def sample_per_task(records: Sequence[dict], tasks: Sequence[str], n: int, seed: int = 0,
                    source: str = "annotations") -> dict[str, list[int]]:
    """Seeded sample of ``n`` record positions per task: {task: sorted positions}.

    Each task draws from its own ``random.Random(f"{seed}/{task}")``, so adding a task does not change the
    others' samples. A task with fewer than ``n`` records contributes all of them (logged).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (samples per task) must be a positive integer, got {n!r}")
    if not tasks:
        raise ValueError("no tasks given; pass task names, e.g. --tasks SynthShapes+color_name,SynthCount+count_digits")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks are listed twice: {sorted(t for t in set(tasks) if list(tasks).count(t) > 1)}")
    groups = records_by_task(records, source)
    unknown = [t for t in tasks if t not in groups]
    if unknown:
        available = sorted(groups)
        raise ValueError(f"{source}: task(s) {unknown} not found; available ({len(available)}): "
                         f"{available[:12]}{' ...' if len(available) > 12 else ''}")
    picked = {}
    for task in tasks:
        pool = groups[task]
        if len(pool) < n:
            logger.warning("%s: task %r has only %d records (< n=%d); using all of them", source, task, len(pool), n)
            picked[task] = list(pool)
        else:
            picked[task] = sorted(random.Random(f"{seed}/{task}").sample(pool, n))
    return picked


def default_image_folder(data: str | Path) -> Path:
    """Where a training JSON's ``image`` paths are relative to: the synthetic suite's ``train.image_root`` when
    a ``manifest.json`` lies beside the file, else the file's folder (the ConversationDataset default)."""
    data = Path(data)
    manifest = data.parent / "manifest.json"
    if manifest.is_file():
        root = json.loads(manifest.read_text()).get("train", {}).get("image_root")
        if root:
            return data.parent / root
    return data.parent


def ensure_synthetic_suite(data: str | Path, seed: int = 0) -> Path:
    """Return ``data``; if it is a missing ``train.json`` in an empty or absent folder, generate the synthetic
    suite there first (``mixlora.data.synthetic.generate_suite``, ~4 s)."""
    data = Path(data)
    if data.is_file():
        return data
    folder = data.parent
    if data.name == "train.json" and (not folder.exists() or not any(folder.iterdir())):
        from mixlora.data.synthetic import generate_suite

        logger.warning("%s is missing: generating the synthetic suite in %s (seed %d)", data, folder, seed)
        generate_suite(folder, seed=seed)
        return data
    raise FileNotFoundError(f"{data} does not exist; pass an existing Vision-Flan JSON with --data (the synthetic "
                            "suite is generated automatically only for DIR/train.json in an empty or absent DIR)")


# ---------------------------------------------------------------------------------------------- held-out sets
def load_manifest(suite_dir: str | Path) -> dict:
    path = Path(suite_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: held-out sets and their closest training tasks come from "
                                "the synthetic suite's manifest (data/make_synthetic.py writes it)")
    return json.loads(path.read_text())


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not a JSON object ({err})") from err
    return rows


def _mme_prompts(folder: Path) -> list[dict]:
    """MME subtask folder (flat ``stem.png + stem.txt`` or ``images/`` + ``questions_answers_YN/``): one prompt per
    question line ``question<TAB>Yes|No``."""
    nested = (folder / "questions_answers_YN").is_dir()
    txt_dir, img_dir = (folder / "questions_answers_YN", folder / "images") if nested else (folder, folder)
    prompts = []
    for txt in sorted(txt_dir.glob("*.txt")):
        images = [p for p in (img_dir / (txt.stem + ext) for ext in (".png", ".jpg", ".jpeg")) if p.is_file()]
        if not images:
            raise FileNotFoundError(f"{txt}: no image {txt.stem}.png/.jpg beside it in {img_dir}")
        for k, line in enumerate(txt.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                question = line.split("\t")[0].strip()
                prompts.append({"unique_id": f"{txt.stem}-{k}", "prompt": question, "image_path": str(images[0])})
    return prompts


def heldout_prompts(suite_dir: str | Path, name: str, manifest: Optional[dict] = None) -> tuple[list[dict], list[str]]:
    """Prompts of one held-out set of the synthetic suite and its closest training tasks (from the manifest).

    ``name``: ``cifar10 | cifar100 | mnist | vsr | snli_ve | textvqa`` (MixLoRA eval JSONL), ``pope`` (the random
    split) or ``pope/<split>``, ``cvbench/<Count|Relation|Depth|Distance>``, ``mme/<subtask>``.
    Returns ``([{"unique_id", "prompt", "image_path" (absolute)}], closest_training_tasks)``.
    """
    suite = Path(suite_dir)
    manifest = manifest if manifest is not None else load_manifest(suite)
    evals = manifest.get("eval", {})
    head, _, tail = name.partition("/")
    try:
        if head == "mme":
            info = evals["mme"]["subtasks"][tail]
            return _mme_prompts(suite / evals["mme"]["path"] / tail), list(info["closest_training_tasks"])
        if head == "cvbench":
            info = evals["cvbench"]["tasks"][tail]
            path = suite / evals["cvbench"]["path"]
            rows = [r for r in _read_jsonl(path) if r.get("task") == tail]
            prompts = [{"unique_id": str(r["idx"]), "prompt": r["prompt"], "image_path": str(path.parent / r["image"])}
                       for r in rows]
            return prompts, list(info["closest_training_tasks"])
        if head == "pope":
            info = evals["pope"]
            path = suite / info["paths"][tail or "random"]
        else:
            if tail:
                raise KeyError(name)
            info = evals[head]
            path = suite / info["path"]
    except KeyError:
        raise ValueError(f"held-out set {name!r} is not in {suite / 'manifest.json'}; use one of "
                         f"{heldout_names(manifest)}") from None
    prompts = [{"unique_id": r["unique_id"], "prompt": r["prompt"], "image_path": str(path.parent / r["image_path"])}
               for r in _read_jsonl(path)]
    return prompts, list(info["closest_training_tasks"])


def heldout_names(manifest: dict) -> list[str]:
    """Every held-out set name that :func:`heldout_prompts` accepts for this manifest."""
    names = []
    for key, info in manifest.get("eval", {}).items():
        if key == "mme":
            names += [f"mme/{s}" for s in info.get("subtasks", {})]
        elif key == "cvbench":
            names += [f"cvbench/{t}" for t in info.get("tasks", {})]
        elif key == "pope":
            names += ["pope"] + [f"pope/{s}" for s in info.get("paths", {})]
        else:
            names.append(key)
    return names


# ---------------------------------------------------------------------------------------------- model under analysis
def adapter_config(kind: str, rank: int, num_factors: Optional[int] = None, alpha: Optional[float] = None,
                   variant: str = "corrected", routing_source: str = "instance"):
    """An ``AdapterConfig`` for a fresh model: LoRA(r), or MixLoRA(E, r) in the corrected or released variant,
    routing on each instance or (``routing_source="task"``) on its task's definition.

    ``alpha`` defaults to 2r for LoRA and corrected MixLoRA (multiplier 2) and to 2E for released MixLoRA.
    """
    from mixlora.inject import AdapterConfig
    from mixlora.options import ADAPTER_KINDS, check_choice

    check_choice("adapter", kind, ADAPTER_KINDS)
    check_choice("variant", variant, MIXLORA_VARIANTS)
    if kind == "lora":
        if routing_source != "instance":
            raise ValueError(f"routing_source={routing_source!r} needs a MixLoRA adapter (LoRA does not route)")
        return AdapterConfig(kind="lora", rank=rank, alpha=alpha if alpha is not None else 2.0 * rank,
                             num_factors=None)
    if num_factors is None:
        raise ValueError("MixLoRA needs num_factors (E), e.g. --num-factors 8")
    if variant == "released":
        extra = {} if alpha is None else {"alpha": alpha}
        return AdapterConfig.released(num_factors, rank, routing_source=routing_source, **extra)
    return AdapterConfig(kind="mixlora", rank=rank, num_factors=num_factors,
                         alpha=alpha if alpha is not None else 2.0 * rank, routing_source=routing_source)


def model_config_path(model: str) -> Path:
    """``tiny`` -> configs/model/tiny.yaml; an existing .yaml path is used as is."""
    path = Path(model)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = MODEL_CONFIG_DIR / f"{model}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"model config {model!r} not found: use one of {known} or a path to a model .yaml")
    return candidate


def fresh_stack(model: str, adapter: Any, corpus_files: Sequence[str | Path], device: str = "cpu"):
    """Build the stack of a model config (``tiny`` or a .yaml path) and inject ``adapter`` into its LLM.

    The tokenizer of a ``local_bpe`` config is trained on ``corpus_files`` (the training JSON), as training does.
    """
    from omegaconf import OmegaConf

    from mixlora.build import build_stack, build_tokenizer_from_config
    from mixlora.inject import inject_adapters

    cfg = OmegaConf.load(model_config_path(model))
    tokenizer = build_tokenizer_from_config(cfg.tokenizer, list(corpus_files))
    stack = build_stack(cfg, tokenizer)
    inject_adapters(stack.model.llm, adapter)
    stack.model.to(device)
    stack.model.eval()
    return stack


def randomize_lora_b(llm, std: float, seed: int = 0) -> int:
    """Draw every adapter's B (``lora_b``) from N(0, std²) with a seeded generator; returns how many modules.

    A fresh adapter has B = 0, which makes every gradient w.r.t. A exactly zero (∂L/∂A = Bᵀ(...)), so the
    interference of A is undefined; a random B stands in for a trained one in smoke runs.
    """
    import torch

    from mixlora.inject import adapter_modules

    if not std > 0:
        raise ValueError(f"b_init_std must be > 0, got {std!r}")
    gen = torch.Generator().manual_seed(seed)
    modules = adapter_modules(llm)
    with torch.no_grad():
        for _, module in sorted(modules.items()):
            b = module.lora_b
            b.copy_((torch.randn(b.shape, generator=gen) * std).to(device=b.device, dtype=b.dtype))
    return len(modules)


def adapted_layers(llm) -> list[int]:
    """Sorted decoder-layer indices that hold at least one adapter."""
    from mixlora.inject import adapter_modules, layer_index

    return sorted({i for i in (layer_index(n) for n in adapter_modules(llm)) if i is not None})


def resolve_layers(spec: str | Sequence[int] | None, available: Sequence[int]) -> list[int]:
    """Layer indices from ``"0,-1"``-style specs: non-negative values are decoder-layer indices, negative ones
    count from the end of ``available`` (the adapted layers); ``None`` = first, middle and last adapted layer
    (0, 15, 31 for a 32-layer model, the paper's t-SNE layers)."""
    available = sorted(available)
    if not available:
        raise ValueError("the model holds no adapters: inject LoRA/MixLoRA first (or pass a run directory)")
    if spec is None:
        return sorted({available[0], available[(len(available) - 1) // 2], available[-1]})
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    layers = []
    for item in items:
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"layer {item!r} is not an integer; use e.g. --layers 0,-1") from None
        if value < 0:
            if -value > len(available):
                raise ValueError(f"layer {value} is out of range: only {len(available)} adapted layers {available}")
            value = available[value]
        if value not in available:
            raise ValueError(f"layer {value} holds no adapter; adapted layers: {available}")
        if value not in layers:
            layers.append(value)
    if not layers:
        raise ValueError("no layers given; use e.g. --layers 0,-1")
    return sorted(layers)


def short_task(name: str) -> str:
    """Label for plots: the part after the dataset prefix (``SynthShapes+color_name`` -> ``color_name``)."""
    return name.split("+", 1)[1] if "+" in name else name


# ---------------------------------------------------------------------------------------------- shared CLI
def add_model_arguments(parser, adapters: Sequence[str] = ("lora", "mixlora")) -> None:
    """The scripts' model options: ``--run RUN_DIR`` or ``--model NAME`` with a fresh adapter."""
    group = parser.add_argument_group("model (a trained run, or a fresh model from a config)")
    which = group.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run directory written by train.py (config.yaml, tokenizer/, adapter, projector)")
    which.add_argument("--model", help="model config name in configs/model/ (e.g. tiny) or a .yaml path; builds a "
                                       "fresh model and injects the adapter below")
    group.add_argument("--adapter", choices=list(adapters), default=adapters[-1], help="adapter of a fresh --model")
    group.add_argument("--rank", type=int, default=4, help="r (LoRA rank / factors selected per instance)")
    group.add_argument("--num-factors", type=int, default=8, help="E, MixLoRA pool size")
    group.add_argument("--alpha", type=float, default=None,
                       help="default 2r (LoRA, corrected MixLoRA) or 2E (released)")
    group.add_argument("--variant", choices=list(MIXLORA_VARIANTS), default="corrected",
                       help="MixLoRA behaviour of a fresh --model (mixlora.AdapterConfig / .released)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def stack_from_args(args, corpus_files: Sequence[str | Path]):
    """The Stack that ``add_model_arguments`` options describe (a run, or a fresh model + adapter)."""
    if args.run:
        from mixlora.build import load_run

        stack, _ = load_run(args.run, device=args.device)
        return stack
    config = adapter_config(args.adapter, args.rank, args.num_factors if args.adapter == "mixlora" else None,
                            args.alpha, args.variant, getattr(args, "routing_source", "instance"))
    return fresh_stack(args.model, config, corpus_files, device=args.device)


def parse_list(text: Optional[str]) -> Optional[list[str]]:
    """``"a,b, c"`` -> ["a", "b", "c"]; None stays None."""
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]
