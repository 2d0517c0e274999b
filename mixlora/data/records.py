"""Training records: the Vision-Flan / LLaVA instruction JSON, read and validated record by record.

Training records (a JSON list; Vision-Flan ``annotation_191-task_1k.json``, LLaVA ``llava_v1_5_mix665k.json``)::

    {"id": "vision-flan_coco+...+13368", "image": "coco+.../13368.jpg", "task_name": "coco+image_classification",
     "conversations": [{"from": "human", "value": "Which appliance is shown?\\nOptions: (a) ...\\n<image>"},
                       {"from": "gpt", "value": "(e) This image contains a microwave"}]}

:func:`read_annotations` is the single reader of training files (the tokenizer corpus and
:class:`~mixlora.data.dataset.ConversationDataset` accept and refuse the same files); :func:`parse_record` holds
the rules every record must meet (``data/prepare_vision_flan.py`` checks with the same function).
"""

from __future__ import annotations

import re

from mixlora.constants import IMAGE_TOKEN
from mixlora.data.templates import GPT, HUMAN

# Problem kinds, as counted in ``report()["skipped"]`` / ``["replaced"]``.
MALFORMED, MISSING_IMAGE, OVERLONG, CORRUPT_IMAGE = "malformed_record", "missing_image", "overlong", "corrupt_image"


class DataError(ValueError):
    """A data problem that stops loading; the message names the file, record, task and the fix."""


class RecordError(ValueError):
    """A malformed record (raised by :func:`parse_record`)."""


def parse_record(record, default_task_name: str | None = None):
    """Validate one training record and return ``(task_name, image, turns)``.

    ``image`` is the relative path or ``None`` (text-only); ``turns`` is a list of ``(role, text)``.
    Raises :class:`RecordError` with a one-line description of the first problem found: not an object,
    missing/empty ``task_name`` (unless ``default_task_name``), missing/empty ``conversations``, a turn without
    ``from``/``value``, roles that do not alternate human/gpt from human to gpt, an empty answer, an
    ``image`` that is not a non-empty string, no ``<image>`` tag although an image is given, a tag without an
    image, more than one tag (one image per sample), or the tag outside the first human turn.
    """
    if not isinstance(record, dict):
        raise RecordError(f"record is a {type(record).__name__}, expected a JSON object")
    task_name = record.get("task_name")
    if task_name is None:
        if default_task_name is None:
            raise RecordError("missing 'task_name' (Vision-Flan records name their task; pass default_task_name "
                              "for data without task names, e.g. LLaVA-665K)")
        task_name = default_task_name
    if not isinstance(task_name, str) or not task_name.strip():
        raise RecordError(f"'task_name' must be a non-empty string, got {task_name!r}")
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise RecordError(f"'conversations' must be a non-empty list of turns, got {_short(conversations)}")
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError(f"turn {i} must be an object with 'from' and 'value', got {_short(turn)}")
        role, value = turn["from"], turn["value"]
        expected = HUMAN if i % 2 == 0 else GPT
        if role != expected:
            raise RecordError(f"turn {i} has role {role!r}; expected {expected!r} (turns alternate 'human', 'gpt')")
        if not isinstance(value, str):
            raise RecordError(f"turn {i} 'value' must be a string, got {_short(value)}")
        if role == GPT and not value.strip():
            raise RecordError(f"turn {i} (gpt) has an empty answer")
        turns.append((role, value))
    if len(turns) % 2:
        raise RecordError("the last turn is a human turn with no gpt answer")
    image = record.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise RecordError(f"'image' must be a relative path string, got {_short(image)}")
    tags = [text.count(IMAGE_TOKEN) for _, text in turns]
    if image is not None and sum(tags) == 0:
        raise RecordError(f"'image' is given but no turn contains {IMAGE_TOKEN!r}")
    if image is None and sum(tags) > 0:
        raise RecordError(f"a turn contains {IMAGE_TOKEN!r} but the record has no 'image'")
    if sum(tags) > 1:
        raise RecordError(f"{sum(tags)} {IMAGE_TOKEN!r} tags; a sample holds exactly one image")
    if sum(tags) == 1 and tags[0] != 1:
        raise RecordError(f"{IMAGE_TOKEN!r} appears outside the first human turn")
    return task_name, image, turns


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(source, index, task_name) -> str:
    return f"{source}: record {index} (task_name={task_name!r})"


def malformed_message(source, index, task_name, err) -> str:
    """The message for a malformed record (``on_error='raise'`` raises it, ``'skip'`` counts it)."""
    return (f"{_where(source, index, task_name)}: {err}. Fix the record, or remove it with "
            "data/prepare_vision_flan.py, or load with on_error='skip'.")


def read_annotations(path, cache_dir: str | None = None):
    """The records of a training file, a JSON list or JSON Lines of objects, as a ``datasets.Dataset`` (one row
    per record; keys missing from a record are None). The single reader of training files, so the tokenizer
    corpus and :class:`ConversationDataset` accept and refuse the same files. DataError names the file."""
    import datasets

    empty = (f"{path}: the file holds no records. Point it at a JSON list (or JSON Lines) of training records, e.g. "
             "the synthetic suite's train.json.")
    try:
        records = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache_dir)
    except Exception as err:  # datasets/pyarrow errors neither name the file nor say what is wrong in words
        with open(path, "rb") as f:
            head = f.read(1024)
        if re.fullmatch(rb"\s*(\[\s*\])?\s*", head):  # an empty file or [] (datasets: "no data" / StopIteration)
            raise DataError(empty) from err
        cause = err
        for _ in range(10):  # the JSON parser's own words are the deepest cause of datasets' generic error
            inner = cause.__cause__ or cause.__context__
            if inner is None:
                break
            cause = inner
        raise DataError(f"{path}: not a readable JSON list of records ({type(cause).__name__}: {cause}). Check "
                        "the file is a JSON list (or JSON Lines) of objects.") from err
    if len(records) == 0:
        raise DataError(empty)
    return records
