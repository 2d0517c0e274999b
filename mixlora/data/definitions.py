"""Task definitions: the text each task-routed instance routes on (task-specific routing:
docs/method.md#routing-sources-the-routing-ablation).

Under ``routing_source="task"`` (``mixlora.options``) a MixLoRA layer routes batch row b on the pooled input of
row ``source_rows[b]``. The collators (``mixlora.data.collator``) append one *definition row* per distinct task of
a micro-batch, holding that task's definition text rendered as a prompt, and point every instance row at it:

    definition row text = template prompt of the definition, no image:
        vicuna_v1: "{system} USER: {definition} ASSISTANT:"
    routing mask        = every real token of that row (it is all prompt);   labels = IGNORE_INDEX everywhere

so every instance of a task gets the selection computed from its task's definition alone, as the released
``task_def`` mode does (it doubles the batch with definition rows; docs/method.md#released-vs-corrected).

File format (``task_definitions.json``): one JSON object mapping each task name to a non-empty definition::

    {"SynthShapes+color_classification": "Given an image of a single shape, choose its color ...",
     "mme/existence": "...", "pope": "..."}

Training looks a definition up by the record's ``task_name``; evaluation by the keys of
``mixlora.tasks.common.definition_keys`` (``<task>/<group>`` first, e.g. ``mme/existence``, then ``<task>``).
The synthetic suite writes one for its training tasks and every held-out set; for Vision-Flan,
``data/prepare_vision_flan.py --definitions`` converts the released table (JSON or TSV, see
:func:`read_definitions_table`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable, Mapping

from mixlora.data.templates import encode_segments, get_template, render_prompt

DEFINITIONS_FILE = "task_definitions.json"
TABLE_FORMATS = ("auto", "json", "tsv")


class DefinitionError(ValueError):
    """A task-definitions file that cannot be used; the message names the file, the problem and the fix."""


def _no_duplicates(path: Path):
    def hook(pairs):
        seen: dict[str, object] = {}
        for key, value in pairs:
            if key in seen:
                raise DefinitionError(f"{path}: task {key!r} is defined twice; keep one definition per task")
            seen[key] = value
        return seen

    return hook


def check_definitions(table: object, where: str) -> dict[str, str]:
    """``table`` if it maps non-empty task names to non-empty strings; else a DefinitionError naming the entry.

    Names are kept exactly (they must equal the records' ``task_name``); whitespace around texts is stripped.
    """
    if not isinstance(table, Mapping):
        raise DefinitionError(f"{where}: expected a JSON object mapping task_name -> definition text, got a "
                              f"{type(table).__name__}")
    out: dict[str, str] = {}
    for name, text in table.items():
        if not isinstance(name, str) or not name.strip():
            raise DefinitionError(f"{where}: task names must be non-empty strings, got {name!r}")
        if not isinstance(text, str) or not text.strip():
            raise DefinitionError(f"{where}: the definition of task {name!r} must be a non-empty string, got "
                                  f"{text!r}; write one or two sentences describing the task")
        out[name] = text.strip()
    if not out:
        raise DefinitionError(f"{where}: holds no definitions")
    return out


def load_definitions(path: str | Path) -> dict[str, str]:
    """Read a ``task_definitions.json`` (see the module docstring) into {task_name: text}, validated."""
    path = Path(path)
    if not path.is_file():
        raise DefinitionError(f"task definitions file {str(path)!r} does not exist")
    try:
        table = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates(path))
    except json.JSONDecodeError as err:
        raise DefinitionError(f"{path}: not valid JSON ({err}); expected an object task_name -> definition "
                              "text") from err
    return check_definitions(table, str(path))


def read_definitions_table(path: str | Path, fmt: str = "auto") -> dict[str, str]:
    """Read a definitions *table* to convert (e.g. the released Vision-Flan table) into {task_name: text}.

    Accepted formats (``fmt="auto"`` picks by suffix: ``.tsv``/``.txt`` -> tsv, else json):

    - json: an object ``{"task_name": "definition", ...}`` (the released ``VISION_FLAN_DEF`` dict dumped with
      ``json.dump``), or a list of objects ``[{"task_name": ..., "definition": ...}, ...]``;
    - tsv: one task per line, ``task_name<TAB>definition`` (exactly two columns; a first line
      ``task_name<TAB>definition`` is taken as a header and skipped). Quotes are not special.
    """
    from mixlora.options import check_choice

    check_choice("format", fmt, TABLE_FORMATS)
    path = Path(path)
    if not path.is_file():
        raise DefinitionError(f"definitions table {str(path)!r} does not exist; pass the local file")
    if fmt == "auto":
        fmt = "tsv" if path.suffix.lower() in (".tsv", ".txt") else "json"
    if fmt == "tsv":
        table: dict[str, str] = {}
        with open(path, encoding="utf-8", newline="") as f:
            for line_no, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != 2:
                    raise DefinitionError(f"{path}:{line_no}: expected 2 tab-separated columns (task_name, "
                                          f"definition), got {len(row)}")
                if line_no == 1 and [c.strip().lower() for c in row] == ["task_name", "definition"]:
                    continue
                if row[0].strip() in table:
                    raise DefinitionError(f"{path}:{line_no}: task {row[0].strip()!r} is defined twice")
                table[row[0].strip()] = row[1]
        return check_definitions(table, str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates(path))
    except json.JSONDecodeError as err:
        raise DefinitionError(f"{path}: not valid JSON ({err}); pass --definitions-format tsv for a TSV "
                              "table") from err
    if isinstance(data, list):
        table = {}
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "task_name" not in item or "definition" not in item:
                raise DefinitionError(f"{path}: list item {i} must be an object with 'task_name' and "
                                      f"'definition', got {str(item)[:80]}")
            name = item["task_name"]
            if isinstance(name, str) and name.strip() in table:
                raise DefinitionError(f"{path}: list item {i}: task {name!r} is defined twice")
            table[name.strip() if isinstance(name, str) else name] = item["definition"]
        data = table
    return check_definitions(data, str(path))


def missing_definitions(names: Iterable[str], definitions: Mapping[str, str]) -> list[str]:
    """The distinct ``names`` without a definition, sorted."""
    return sorted({n for n in names if n not in definitions})


def missing_message(missing: list[str], path: str | Path, what: str, fix: str) -> str:
    """One error text for task names without a definition (the first 20 listed)."""
    shown = ", ".join(repr(m) for m in missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
    return f"{path}: no definition for {len(missing)} {what}: {shown}. {fix}"


def definition_prompt_segments(text: str, template: str):
    """The definition rendered as a prompt without an image (``"{system} USER: {text} ASSISTANT:"``)."""
    chat = get_template(template)
    if chat.style == "plain":
        raise DefinitionError(f"template {template!r} has no instruction turn to hold a task definition (it renders "
                              "only the image); task routing needs a conversation template such as vicuna_v1")
    return render_prompt(chat, text, with_image=False)


def encode_definition(text: str, tokenizer, template: str) -> list[int]:
    """Token ids of a definition row: BOS + the prompt of :func:`definition_prompt_segments`, tokenised exactly as
    an instruction (``encode_segments``); no image token, so the row holds no image positions."""
    ids, _ = encode_segments(definition_prompt_segments(text, template), tokenizer)
    return ids


class DefinitionEncoder:
    """Encodes definitions on first use and caches them by key: ``encoder(key) -> list[int]``.

    Args:
        definitions: {key: text}.
        tokenizer, template: as :func:`encode_definition`.
        max_length: optional limit on a definition row's tokens (the training ``max_length``); longer is an error.
    """

    def __init__(self, definitions: Mapping[str, str], tokenizer, template: str, max_length: int | None = None):
        definition_prompt_segments("x", template)  # a template without an instruction fails here, not per batch
        self.definitions = dict(definitions)
        self.tokenizer, self.template, self.max_length = tokenizer, template, max_length
        self._ids: dict[str, list[int]] = {}

    def __call__(self, key: str) -> list[int]:
        if key not in self._ids:
            if key not in self.definitions:
                raise DefinitionError(f"no task definition for {key!r}; add it to the definitions file")
            ids = encode_definition(self.definitions[key], self.tokenizer, self.template)
            if self.max_length is not None and len(ids) > self.max_length:
                raise DefinitionError(f"the definition of {key!r} is {len(ids)} tokens as a prompt, more than "
                                      f"max_length={self.max_length}; shorten it or raise max_length")
            self._ids[key] = ids
        return self._ids[key]
