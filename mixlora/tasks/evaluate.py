"""The generation loop of evaluation: tasks' examples -> batched, left-padded ``model.generate`` -> scored outputs.

For each task (``mixlora.tasks``)::

    examples = task.examples(limit, decoding.prompts)             # fixed order; uid per example
    skip the uids already in OUT/eval/<task>/predictions.jsonl     # resume (settings must match)
    for each batch of the rest:                                    # batch_size, in order
        prompt ids = template(question) with <image> expanded      # as mixlora.data.PromptDataset builds them
        GenerationCollator pads on the LEFT; routing_mask = the prompt tokens
        new tokens = model.generate(..., max_new_tokens, greedy or sampling)   # inside the routing context:
                     # MixLoRA layers route on the prompt at prefill and, while decoding, reuse that choice
                     # or re-route per step, as each adapter's decode_routing says
        prediction = decode(new tokens, skip_special_tokens).strip()
        append the batch's records to predictions.jsonl and flush
    scores = task.score(records in example order)                  # official scorers, mixlora.scoring
    write OUT/eval/<task>/metrics.json

Then ``OUT/eval/metrics.json`` (all tasks + MMAvg) and ``OUT/eval/results.md``; see ``mixlora.tasks.report``.

Task routing (a run trained with ``adapter.routing_source=task``): every example needs a task definition,
looked up in ``definitions`` ({key: text}, ``mixlora.data.definitions``) under ``"<task>/<group>"`` then
``"<task>"`` (``mixlora.tasks.common.definition_keys``: ``mme/existence``, ``cvbench/Count``, ``pope``,
``textvqa``, ...). Every key is checked before anything is generated. The collator appends one definition row
per distinct definition of a batch and ``model.generate`` routes each example on its row at prefill (see
``mixlora.model.llava``); the definition texts used are part of the resume settings.

Decoding is greedy by default. Sampling (``do_sample=True``, the released T = 0.2) reseeds the global RNG before
every batch from (seed, task, first uid of the batch), so a resumed run draws exactly what an uninterrupted one
would: batches always restart at a batch boundary because predictions are only written per batch.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch

from ..checkpoint import atomic_write
from ..data.collator import GenerationCollator
from ..data.templates import (encode_segments, expand_image_tokens, get_template, image_token_id_of, render_prompt,
                             shift_span)
from ..options import DECODE_ROUTING, check_choice
from ..progress import TaskProgress, resolve_progress
from .common import PROMPT_MODES, Example, Task, TaskError, definition_keys, find_definition, jsonable
from .predictions import PredictionFile
from .report import results_markdown, summarize

logger = logging.getLogger(__name__)

EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.md"


@dataclass
class Decoding:
    """How answers are generated (``configs/decoding/*.yaml``).

    template: conversation template of the prompt (``vicuna_v1`` = the training template; ``llava_v1`` = the
        released evaluation's, whose system prompt differs from training).
    do_sample, temperature, top_p, top_k: greedy when ``do_sample`` is false (the default); the released code
        samples at temperature 0.2 with transformers' other defaults (null top_p/top_k = the model's
        generation config, normally top_p 1.0 and top_k 50).
    max_new_tokens: null = each task's own default; a number overrides every task (released: 1024).
    prompts: "task" = each task's suffix rules (e.g. "Answer the question using a single word or phrase.");
        "as_is" = the dataset prompt untouched apart from "[Options]" -> "Options" (released).
    seed: seeds sampling (see the module docstring); irrelevant for greedy decoding.
    """

    template: str = "vicuna_v1"
    do_sample: bool = False
    temperature: float = 1.0
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    max_new_tokens: Optional[int] = None
    prompts: str = "task"
    seed: int = 0

    def __post_init__(self) -> None:
        get_template(self.template)
        check_choice("decoding.prompts", self.prompts, PROMPT_MODES)
        if self.do_sample and not float(self.temperature) > 0:
            raise ValueError(f"decoding.temperature={self.temperature} must be > 0 when do_sample is true "
                             "(use do_sample=false for greedy decoding)")
        if self.top_p is not None and not 0 < float(self.top_p) <= 1:
            raise ValueError(f"decoding.top_p={self.top_p} must be in (0, 1] or null")
        if self.top_k is not None and int(self.top_k) < 0:
            raise ValueError(f"decoding.top_k={self.top_k} must be >= 0 or null")
        if self.max_new_tokens is not None and int(self.max_new_tokens) < 1:
            raise ValueError(f"decoding.max_new_tokens={self.max_new_tokens} must be >= 1 or null (task default)")

    @classmethod
    def coerce(cls, value: Any) -> "Decoding":
        if isinstance(value, cls):
            return value
        value = {k: v for k, v in dict(jsonable(value) or {}).items() if k != "_target_"}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown decoding key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**value)

    def generate_kwargs(self, max_new_tokens: int, tokenizer) -> dict:
        kwargs = dict(max_new_tokens=int(max_new_tokens), do_sample=bool(self.do_sample),
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        if self.do_sample:
            kwargs["temperature"] = float(self.temperature)
            if self.top_p is not None:
                kwargs["top_p"] = float(self.top_p)
            if self.top_k is not None:
                kwargs["top_k"] = int(self.top_k)
        return kwargs


def set_decode_routing(model: torch.nn.Module, mode: Optional[str]) -> int:
    """Force every MixLoRA layer's ``decode_routing`` (None keeps the adapter config's); returns the layer count."""
    from ..layers import MixLoRALinear

    if mode is None:
        return 0
    check_choice("decode_routing", mode, DECODE_ROUTING)
    layers = [m for m in model.modules() if isinstance(m, MixLoRALinear)]
    for m in layers:
        m.decode_routing = mode
    return len(layers)


def encode_question(question: str, tokenizer, template: str, num_image_tokens: int, instruction: bool = False):
    """Prompt ids: the template up to "ASSISTANT:" with the image in front, ``<image>`` expanded to N ids.

    ``instruction=True`` returns ``(ids, span)``: also the token positions [start, end) of the question itself
    (``routing_tokens="instruction"``; None for an empty question)."""
    segments = render_prompt(get_template(template), question, with_image=True)
    image_id = image_token_id_of(tokenizer)
    if not instruction:
        ids, _ = encode_segments(segments, tokenizer)
        ids, _ = expand_image_tokens(ids, ids, image_id, num_image_tokens)
        return ids
    raw, _, span = encode_segments(segments, tokenizer, instruction=True)
    ids, _ = expand_image_tokens(raw, raw, image_id, num_image_tokens)
    return ids, shift_span(span, raw, image_id, num_image_tokens)


def prompt_sample(example: Example, tokenizer, processor, template: str, num_image_tokens: int,
                  instruction: bool = False, task_name: str = "task") -> dict:
    """One generation-collator sample: ``input_ids`` of the prompt, ``pixel_values``, and with ``instruction``
    the ``instruction_span`` that ``routing_tokens="instruction"`` routes on."""
    sample = {"pixel_values": load_pixels(processor, example, task_name)}
    if instruction:
        sample["input_ids"], sample["instruction_span"] = encode_question(
            example.question, tokenizer, template, num_image_tokens, instruction=True)
    else:
        sample["input_ids"] = encode_question(example.question, tokenizer, template, num_image_tokens)
    return sample


def load_pixels(processor, example: Example, task_name: str = "task") -> torch.Tensor:
    """``[3, S, S]`` for an example whose image is a file path, a PIL image, or None (text-only: a blank image)."""
    from PIL import Image

    from ..data.images import IMAGE_ERRORS

    if example.image is None:
        return processor.blank()
    if isinstance(example.image, Image.Image):
        return processor(example.image)
    try:
        return processor.load(example.image)
    except IMAGE_ERRORS as err:
        raise TaskError(f"{task_name}: example {example.uid!r}: cannot read image {example.image} "
                        f"({type(err).__name__}: {err}); replace the file or drop the example") from err


def task_routed(model: torch.nn.Module) -> bool:
    """Whether any MixLoRA layer of ``model`` routes on task definitions (``routing_source="task"``)."""
    from ..layers import MixLoRALinear

    return any(isinstance(m, MixLoRALinear) and m.routing_source == "task" for m in model.modules())


def check_task_definitions(tasks: Mapping[str, Task], examples: Mapping[str, Sequence[Example]],
                           definitions: Mapping[str, str], source: str = "the task definitions") -> None:
    """TaskError unless every example of every task has a definition (keys of ``definition_keys``)."""
    missing: dict[str, list[str]] = {}
    for name in tasks:
        for ex in examples[name]:
            if find_definition(name, ex, definitions) is None:
                keys = " or ".join(repr(k) for k in definition_keys(name, ex))
                missing.setdefault(name, [])
                if keys not in missing[name]:
                    missing[name].append(keys)
    if missing:
        listed = "; ".join(f"{name}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                           for name, keys in missing.items())
        raise TaskError(f"the model routes on task definitions, but {source} has none for {listed}. Add an entry "
                        "per key (JSON object key -> definition text; the synthetic suite writes all of its keys) "
                        "and pass it with task_definitions=PATH (docs/evaluation.md, 'Task routing').")


def used_definitions(task: str, examples: Sequence[Example], definitions: Mapping[str, str]) -> dict[str, str]:
    """{key: text} of the definitions the examples of ``task`` route on (for the resume settings)."""
    keys = sorted({find_definition(task, ex, definitions) for ex in examples} - {None})
    return {k: definitions[k] for k in keys}


def resolve_task_definitions(path: Optional[str], run: Optional[str]) -> Optional[dict[str, str]]:
    """The definitions eval.py needs: None for a run that does not route on task definitions (a ``path`` given
    anyway is an error); for a task-routed run, ``path`` or else the run's ``data.task_definitions``.

    A relative path in the run's config is resolved against the current folder, as train.py resolved it.
    """
    from ..checkpoint import CONFIG_NAME
    from ..data.definitions import DefinitionError, load_definitions

    routed = False
    if run is not None and (Path(run) / CONFIG_NAME).is_file():
        adapter = json.loads((Path(run) / CONFIG_NAME).read_text(encoding="utf-8"))
        routed = adapter.get("kind") == "mixlora" and adapter.get("routing_source") == "task"
    if not routed:
        if path is not None:
            raise TaskError(f"task_definitions={path} is set, but {'run=null (the base model)' if run is None else run}"
                            " does not route on task definitions (no adapter with routing_source=task); drop "
                            "task_definitions")
        return None
    if path is None:
        from omegaconf import OmegaConf

        config = Path(run) / "config.yaml"
        path = OmegaConf.select(OmegaConf.load(config), "data.task_definitions") if config.is_file() else None
        if path is None:
            raise TaskError(f"{run} routes on task definitions (adapter routing_source=task) but its config names no "
                            "data.task_definitions; pass task_definitions=PATH (a JSON object key -> definition)")
        if not Path(path).is_file():
            raise TaskError(f"{run} was trained with data.task_definitions={path}, which does not exist from here "
                            "(relative paths resolve against the current folder); pass task_definitions=PATH")
    try:
        return load_definitions(path)
    except DefinitionError as err:
        raise TaskError(f"task_definitions: {err}") from err


def attach_definition(sample: dict, example: Example, task_name: str, definitions: Mapping[str, str],
                      encoder: Callable[[str], list[int]]) -> dict:
    """Give a collator ``sample`` its task-definition row (task routing) and return it: ``definition_key`` = the
    first of ``definition_keys(task_name, example)`` in ``definitions``, ``definition_ids`` = ``encoder(key)`` (a
    ``mixlora.data.definitions.DefinitionEncoder``: the definition as a prompt, no image). The collators append
    one row per distinct key. TaskError naming the keys tried when none is there."""
    key = find_definition(task_name, example, definitions)
    if key is None:
        raise TaskError(f"{task_name}: example {example.uid!r} has no task definition under "
                        f"{' or '.join(map(repr, definition_keys(task_name, example)))}")
    sample.update(definition_key=key, definition_ids=encoder(key))
    return sample


def _batch_seed(seed: int, task: str, uid: str) -> int:
    return zlib.crc32(f"{seed}/{task}/{uid}".encode("utf-8"))


def generate_answers(stack, examples: Sequence[Example], decoding: Decoding, max_new_tokens: int,
                     batch_size: int = 8, device: str | torch.device = "cpu", task_name: str = "task",
                     progress: Optional[TaskProgress] = None,
                     definitions: Optional[Mapping[str, str]] = None) -> Iterator[list[tuple[Example, str]]]:
    """Yield ``[(example, prediction)]`` per batch, in order (see the module docstring).

    ``definitions``: {key: text} for a task-routed model; each example routes on the definition found by
    ``find_definition(task_name, example, definitions)``, rendered with ``decoding.template`` (no image).
    ``progress``: anything with ``update(n)`` (a :class:`~mixlora.progress.TaskProgress`, a tqdm bar), told
    after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    model, tokenizer, processor = stack.model, stack.tokenizer, stack.image_processor
    collate = GenerationCollator(tokenizer.pad_token_id)
    n_image = model.num_image_tokens
    instruction = model.routes_on_instruction()
    kwargs = decoding.generate_kwargs(max_new_tokens, tokenizer)
    encoder = None
    if definitions is not None:
        from ..data.definitions import DefinitionEncoder

        encoder = DefinitionEncoder(definitions, tokenizer, decoding.template)
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        samples = []
        for ex in chunk:
            sample = prompt_sample(ex, tokenizer, processor, decoding.template, n_image, instruction, task_name)
            if encoder is not None:
                attach_definition(sample, ex, task_name, definitions, encoder)
            samples.append(sample)
        batch = collate(samples)
        torch.manual_seed(_batch_seed(decoding.seed, task_name, chunk[0].uid))
        extra = {key: batch[key].to(device) for key in ("source_rows", "instruction_mask") if key in batch}
        new_tokens = model.generate(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
            pixel_values=batch["pixel_values"].to(device), routing_mask=batch["routing_mask"].to(device),
            **extra, **kwargs)
        texts = tokenizer.batch_decode(new_tokens.cpu(), skip_special_tokens=True)
        if progress is not None:
            progress.update(len(chunk))
        yield [(ex, text.strip()) for ex, text in zip(chunk, texts)]


def prediction_record(example: Example, prediction: str) -> dict:
    """One line of predictions.jsonl: uid, the task's record fields, ``asked`` (the user text the model saw,
    template excluded) and ``prediction``. Ours win over record fields of the same name."""
    record = {"uid": example.uid, **example.record}
    record.update(uid=example.uid, asked=example.question, prediction=prediction)
    return record


def evaluate_task(stack, task: Task, out_dir: str | Path, decoding: Decoding | Mapping, batch_size: int = 8,
                  limit: Optional[int] = None, overwrite: bool = False, device: str | torch.device = "cpu",
                  source: Optional[dict] = None, progress: bool | str = True,
                  examples: Optional[Sequence[Example]] = None,
                  definitions: Optional[Mapping[str, str]] = None, progress_every_s: float = 30.0) -> dict:
    """Generate (resuming), score and write ``out_dir/eval/<task>/{predictions.jsonl,metrics.json}``.

    ``examples``: the task's examples if already loaded (``task.examples(limit, decoding.prompts)`` otherwise).
    ``definitions``: {key: text}, required by (and only accepted for) a model with task routing (module docstring).
    ``progress``: ``auto`` (true), ``bar``, ``lines`` or ``none`` (false), :mod:`mixlora.progress`; in lines mode
    a line ``<task>: done/total examples | ex/s | ETA`` at most every ``progress_every_s`` seconds (0: every
    batch) and at the end.
    Returns the task's metrics dict: ``{"task", "headline", "scores", "samples", "generated", "reused", "limit",
    "max_new_tokens"}`` (``scores`` = the official scorer's output for the written files).
    """
    decoding = Decoding.coerce(decoding)
    mode = resolve_progress(progress)
    check_progress_interval(progress_every_s)
    folder = Path(out_dir) / EVAL_DIR / task.name
    if examples is None:
        examples = task.examples(limit, decoding.prompts)
    if not examples:
        raise TaskError(f"{task.name}: no examples to evaluate")
    check_definitions(stack.model, definitions)
    if definitions is not None:
        check_task_definitions({task.name: task}, {task.name: examples}, definitions)
    max_new = int(decoding.max_new_tokens or task.max_new_tokens)
    settings = {"task": jsonable(task.settings()), "decoding": asdict(decoding), "max_new_tokens": max_new,
                "batch_size": batch_size, "source": source or {}}
    if definitions is not None:  # the texts routed on change the answers (absent otherwise: older files match)
        settings["task_definitions"] = used_definitions(task.name, examples, definitions)
    store = PredictionFile(folder, settings, overwrite=overwrite)
    done = store.load()
    pending = [ex for ex in examples if ex.uid not in done]
    reused = len(examples) - len(pending)
    if reused:
        logger.info("%s: resuming, %d of %d examples already predicted", task.name, reused, len(examples))
    with TaskProgress(task.name, len(examples), reused, mode, progress_every_s, emit=logger.info) as bar:
        for pairs in generate_answers(stack, pending, decoding, max_new, batch_size, device, task.name, bar,
                                      definitions=definitions):
            records = [prediction_record(ex, text) for ex, text in pairs]
            store.append(records)
            done.update((r["uid"], r) for r in records)
    records = [done[ex.uid] for ex in examples]
    scores = task.score(records, folder)
    metrics = {"task": task.name, "headline": task.headline(scores), "scores": scores, "samples": len(examples),
               "generated": len(pending), "reused": reused, "limit": limit, "max_new_tokens": max_new}
    write_json(folder / METRICS_FILE, metrics)
    return metrics


def check_definitions(model: torch.nn.Module, definitions: Optional[Mapping[str, str]],
                      how_to_pass: str = "pass task_definitions=PATH (eval.py; by default the run's "
                                         "data.task_definitions) or definitions={key: text}") -> None:
    """TaskError unless task definitions are given exactly when ``model`` routes on them (``routing_source="task"``);
    ``how_to_pass`` is the caller's fix for a task-routed model without them."""
    routed = task_routed(model)
    if routed and definitions is None:
        raise TaskError("the model routes on task definitions (adapter routing_source=task), so every evaluation set "
                        f"needs a definition: {how_to_pass}")
    if not routed and definitions is not None:
        raise TaskError("task definitions were given, but the model does not route on them (no MixLoRA layer with "
                        "routing_source=task); drop them")


def load_examples(tasks: Mapping[str, Task], limit: Optional[int], decoding: Decoding | Mapping) -> dict:
    """{name: task.examples(limit, prompts)}: every task's data read and checked before any generation, so a bad
    file fails in seconds rather than after a long model load or hours of generation."""
    decoding = Decoding.coerce(decoding)
    return {name: task.examples(limit, decoding.prompts) for name, task in tasks.items()}


def evaluate(stack, tasks: Mapping[str, Task], out_dir: str | Path, decoding: Decoding | Mapping,
             batch_size: int = 8, limit: Optional[int] = None, overwrite: bool = False,
             device: str | torch.device = "cpu", pope_metric: str = "f1", source: Optional[dict] = None,
             progress: bool | str = True, on_task: Optional[Callable[[str, dict], None]] = None,
             examples: Optional[Mapping[str, Sequence[Example]]] = None,
             definitions: Optional[Mapping[str, str]] = None, progress_every_s: float = 30.0) -> dict:
    """Evaluate every task in order, then write ``eval/metrics.json`` and ``eval/results.md``; returns the summary.

    ``examples``: {task name: its examples} when already read (see :func:`load_examples`).
    ``definitions``: {key: text} for a model with task routing (module docstring); every task's keys are checked
    before the first task is generated. ``progress``, ``progress_every_s``: as :func:`evaluate_task`.
    """
    decoding = Decoding.coerce(decoding)
    resolve_progress(progress)  # bad values fail before the first task
    check_progress_interval(progress_every_s)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    sets = [t.mmavg_set for t in tasks.values() if t.mmavg_set is not None]
    if len(sets) != len(set(sets)):
        raise TaskError(f"several tasks count as the same MMAvg set ({sorted(sets)}); keep one of each in `tasks`")
    if examples is None:
        examples = load_examples(tasks, limit, decoding)
    check_definitions(stack.model, definitions)
    if definitions is not None:
        check_task_definitions(tasks, examples, definitions)
    stack.model.eval()  # adapter dropout must be off; generate() does not switch modes itself
    per_task, mmavg_inputs = {}, {}
    for name, task in tasks.items():
        metrics = evaluate_task(stack, task, out_dir, decoding, batch_size, limit, overwrite, device, source, progress,
                                examples=examples[name], definitions=definitions, progress_every_s=progress_every_s)
        per_task[name] = metrics
        if task.mmavg_set is not None:
            mmavg_inputs[task.mmavg_set] = metrics["scores"]
        if on_task is not None:
            on_task(name, metrics)
    summary = summarize(per_task, mmavg_inputs, pope_metric=pope_metric, limit=limit, decoding=asdict(decoding),
                        source=source)
    folder = Path(out_dir) / EVAL_DIR
    write_json(folder / METRICS_FILE, summary)
    text = results_markdown(summary)
    atomic_write(folder / RESULTS_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return summary


def check_progress_interval(seconds: Any) -> float:
    """``seconds`` as a float if it is a number >= 0 (0: a progress line after every batch); ValueError otherwise."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0 \
            or seconds == float("inf"):
        raise ValueError(f"progress_every_s={seconds!r} must be a number of seconds >= 0 (0: a line after every "
                         "batch)")
    return float(seconds)


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
