"""What every evaluation task shares: the example type, the task interface, prompt building and file reading.

A task turns local benchmark files into :class:`Example` s (one question + one image each) and scores the
model's answers with the official scorer of ``mixlora.scoring``. ``mixlora.tasks.evaluate`` does the generation in
between; it never looks inside a task's records.

Prompt building (``build_question``), the released evaluation's steps in order::

    text = prompt.replace("[Options]", "Options")                  (released evaluate.py)
    text = text without a trailing strip_suffix                    (e.g. MME's " Please answer yes or no.")
    text = text + separator + prompt_suffix                        (e.g. "\\nAnswer the question using a single
                                                                    word or phrase.", LLaVA-1.5 / lmms-eval)

``prompts="as_is"`` (the released settings) skips the strip and the suffix; only the "[Options]" replacement
stays. The template (``vicuna_v1``/``llava_v1``) and the image tag are added later by ``mixlora.tasks.evaluate``.

Limits (``limit=N``) keep the first N examples of each *group*, so a smoke run still covers every part of a
benchmark: each MME subtask (rounded up to whole images, 2 questions each), each POPE split, each CV-Bench task,
otherwise the file.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

from mixlora.scoring import JsonlRecords, ScoringError, locate, read_jsonl
from mixlora.options import check_choice

PROMPT_MODES = ("task", "as_is")
OPTIONS_TAG = ("[Options]", "Options")
# LLaVA-1.5's short-answer instruction (scripts/v1_5/eval/*.sh; lmms-eval's post_prompt for MME/POPE/TextVQA).
SHORT_ANSWER = "Answer the question using a single word or phrase."
# LLaVA-1.5's multiple-choice instruction (ScienceQA/MMBench/SEED scripts), used for CV-Bench.
OPTION_LETTER = "Answer with the option's letter from the given choices directly."


class TaskError(ValueError):
    """Bad task input (missing file, malformed record, bad option); the message names the task, file and fix."""


@dataclass
class Example:
    """One generation request.

    uid:      unique within the task; the resume key in ``predictions.jsonl``.
    question: the user text after the image (prompt building done, template not applied).
    image:    path of the image file (a PIL image or None, text-only, are accepted too: the lmms-eval plugin).
    record:   the fields written to ``predictions.jsonl`` next to ``uid``, ``asked`` and ``prediction``:
              whatever the task's scorer needs (targets, categories, options, ...).
    group:    the part of the benchmark it belongs to (MME subtask, POPE split, CV-Bench task, or the task name).
    """

    uid: str
    question: str
    image: Any
    record: dict = field(default_factory=dict)
    group: str = ""


class Task(Protocol):
    """The interface ``mixlora.tasks.evaluate`` needs. Each module in ``mixlora.tasks`` provides one implementation.

    name:            output folder name (``eval/<name>/``) and the key in ``eval/metrics.json``.
    max_new_tokens:  default generation length for this task (a decoding config may override it).
    examples(limit, prompts) -> list[Example]   in a fixed order; ``limit`` per group (see module docstring).
    score(records, out_dir) -> dict             ``records``: the prediction records (``Example.record`` +
                                                uid, asked, prediction) in example order; may write extra
                                                files into ``out_dir`` (MME's eval_tool folder). Returns the
                                                scorer's JSON output, exactly as ``python -m mixlora.scoring.score``
                                                prints it for the written files.
    headline(scores) -> dict[str, float]        the few numbers shown in results.md (percent or points).
    mmavg_set:       which of MMAvg's seven sets this task is (``mixlora.scoring.aggregate.MMAVG_SETS``), or None.
    settings() -> dict                          everything that changes the predictions (paths, prompts), for
                                                the resume check.
    """

    name: str
    max_new_tokens: int
    mmavg_set: Optional[str]

    def examples(self, limit: Optional[int] = None, prompts: str = "task") -> list[Example]: ...

    def score(self, records: list[dict], out_dir: Path) -> dict: ...

    def headline(self, scores: dict) -> dict[str, float]: ...

    def settings(self) -> dict: ...


def definition_keys(task: str, example: Example) -> list[str]:
    """Keys under which an example's task definition is looked up (task routing), in order: ``"<task>/<group>"``,
    ``"<task>"``, then ``"<group>"`` when the example has a group other than the task name (MME subtask, CV-Bench
    task, POPE split, a seen-task record's training task_name), else ``["<task>"]``. E.g. ``["mme/existence",
    "mme", "existence"]``, ``["cifar10"]``; ``task`` is the configured task name (``eval/<task>/``). The last key
    lets held-out instances of a *training* task route on that task's training definition."""
    if example.group and example.group != task:
        return [f"{task}/{example.group}", task, example.group]
    return [task]


def find_definition(task: str, example: Example, definitions) -> str | None:
    """The first of :func:`definition_keys` present in ``definitions`` ({key: text}), or None."""
    return next((k for k in definition_keys(task, example) if k in definitions), None)


def check_prompts(prompts: str) -> str:
    return check_choice("prompts", prompts, PROMPT_MODES)


def build_question(prompt: str, strip_suffix: str = "", prompt_suffix: str = "", separator: str = "\n",
                   prompts: str = "task") -> str:
    """The user text for one example (see the module docstring for the steps)."""
    check_prompts(prompts)
    text = prompt.replace(*OPTIONS_TAG)
    if prompts == "as_is":
        return text
    if strip_suffix and text.rstrip().endswith(strip_suffix.strip()):
        text = text.rstrip()[: -len(strip_suffix.strip())].rstrip()
    if prompt_suffix:
        text = text + separator + prompt_suffix
    return text


def check_limit(limit: Any) -> Optional[int]:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise TaskError(f"limit={limit!r} must be a positive integer (examples per group) or null for all")
    return limit


def first_per_group(examples: Sequence[Example], limit: Optional[int]) -> list[Example]:
    """The first ``limit`` examples of each group, order kept."""
    if limit is None:
        return list(examples)
    seen: Counter = Counter()
    kept = []
    for ex in examples:
        if seen[ex.group] < limit:
            kept.append(ex)
            seen[ex.group] += 1
    return kept


def check_unique(examples: Sequence[Example], task: str, where: Callable[[int], str]) -> None:
    """Resume matches predictions by uid, so a repeated uid would silently reuse another example's answer."""
    first: dict[str, int] = {}
    for i, ex in enumerate(examples):
        if ex.uid in first:
            raise TaskError(f"{task}: {where(i)} repeats id {ex.uid!r} (first at {where(first[ex.uid])}); ids must "
                            "be unique because predictions are matched to examples by id. Fix the file.")
        first[ex.uid] = i


def require_file(path: Any, task: str, what: str, hint: str) -> Path:
    if path is None or str(path) == "":
        raise TaskError(f"{task}: no {what} given; set task.{task}.path ({hint})")
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise TaskError(f"{task}: {what} {p} does not exist ({hint})")
    return p


def read_records(path: Path, task: str) -> JsonlRecords:
    """Read a JSONL file, turning the scorers' ScoringError into a TaskError that names the task."""
    try:
        return read_jsonl(path)
    except ScoringError as err:
        raise TaskError(f"{task}: {err}") from None


RELEASED_FORMAT = "released format: unique_id, prompt, target, image_path"


def string_field(records: JsonlRecords, i: int, name: str, task: str, fmt: str = RELEASED_FORMAT) -> str:
    """``records[i][name]`` if it is a non-empty string; else a TaskError naming file, line and format."""
    value = records[i].get(name)
    if not isinstance(value, str) or not value.strip():
        raise TaskError(f"{task}: {locate(records, i)}: field {name!r} must be a non-empty string, got {value!r}. "
                        f"Fix the line ({fmt}).")
    return value


def resolve_image(records: JsonlRecords, i: int, name: str, root: Path, task: str) -> Path:
    """``root / value`` (absolute values stay), checked to exist."""
    value = records[i].get(name)
    if not isinstance(value, str) or not value:
        raise TaskError(f"{task}: {locate(records, i)}: field {name!r} must name an image file, got {value!r}.")
    path = Path(value) if Path(value).is_absolute() else root / value
    if not path.is_file():
        raise TaskError(f"{task}: {locate(records, i)}: image {path} does not exist. Relative image paths are "
                        f"resolved against {root}; set task.{task}.image_root to the folder holding them.")
    return path


def released_examples(path: Any, task: str, prompt_suffix: str, strip_suffix: str, prompts: str,
                      image_root: Any = None, group: Optional[str] = None,
                      extra: Optional[dict] = None) -> list[Example]:
    """Examples from a released MixLoRA evaluation JSONL (docs/benchmarks.md#released-evaluation-files)::

        {"unique_id": "cifar10-00000", "prompt": "What is the object?\\nOptions: (a) ...", "target": "cross",
         "image_path": "images/00000.png", ...any other fields are kept}

    The record written with each prediction is the line as read, with ``prompt`` as the model saw it before
    the suffix ("[Options]" -> "Options", so option markers parse) and the original kept in
    ``original_prompt`` when that changed it; ``extra`` fields are added (e.g. POPE's ``split``).
    """
    file = require_file(path, task, "evaluation file", "a released-format JSONL: unique_id, prompt, target, "
                        "image_path per line")
    if file.is_dir():
        raise TaskError(f"{task}: {file} is a folder; task.{task}.path must be the JSONL file itself")
    root = Path(str(image_root)).expanduser() if image_root else file.parent
    records = read_records(file, task)
    examples = []
    for i, record in enumerate(records):
        uid = records[i].get("unique_id")
        if not isinstance(uid, (str, int)) or isinstance(uid, bool) or str(uid) == "":
            raise TaskError(f"{task}: {locate(records, i)}: field 'unique_id' must be a string or integer, got "
                            f"{uid!r}.")
        prompt = string_field(records, i, "prompt", task)
        if not isinstance(record.get("target"), str):
            raise TaskError(f"{task}: {locate(records, i)}: field 'target' must be a string, got "
                            f"{record.get('target')!r}.")
        image = resolve_image(records, i, "image_path", root, task)
        shown = prompt.replace(*OPTIONS_TAG)
        out = dict(record)
        if shown != prompt:
            out["original_prompt"] = prompt
            out["prompt"] = shown
        out.update(extra or {})
        prefix = f"{group}/" if group else ""
        examples.append(Example(uid=f"{prefix}{uid}", image=image, record=out, group=group or task,
                                question=build_question(prompt, strip_suffix, prompt_suffix, prompts=prompts)))
    check_unique(examples, task, lambda k: locate(records, k))
    return examples


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of config values (OmegaConf containers, paths)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return json.loads(json.dumps(value, default=str))

