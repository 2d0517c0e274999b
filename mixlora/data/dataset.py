"""Datasets: Vision-Flan / LLaVA instruction JSON for training, the released evaluation JSONL for generation,
and a seeded group-by-length batch sampler.

Training records (a JSON list of Vision-Flan / LLaVA records, format in :mod:`mixlora.data.records`): ``id`` is
not unique and is not used; samples are identified by ``task_name`` and ``index`` (the record's position in the
JSON list). A record without ``image`` is text-only: it gets an all-zero image and still one ``<image>`` (so N
image positions), as the model contract requires.

Up front (one pass over the JSON, cached by ``datasets``): records are validated, rendered with the template
and tokenised; image files are checked for existence. Lazily (``__getitem__``): images are decoded.

Modules (their names are re-exported here, so ``from mixlora.data.dataset import X`` keeps working):
    ``mixlora.data.records``        reading and validating training records; DataError, RecordError
    ``mixlora.data.encoding``       tokenisation, masking, the over-length policy, the tokenised rows' cache key
    ``mixlora.data.batch_sampler``  LengthGroupedBatchSampler
This module holds the Dataset classes: ConversationDataset, TaskDefinitionDataset, PromptDataset.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
from collections import Counter
from multiprocessing.context import get_spawning_popen
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mixlora.data.batch_sampler import LengthGroupedBatchSampler
from mixlora.data.encoding import _OK, _TRUNCATED, OVERLONG_POLICIES, _encode_batch, _encoding_fingerprint
from mixlora.data.images import IMAGE_ERRORS, ImageMemo
from mixlora.data.records import (CORRUPT_IMAGE, MALFORMED, MISSING_IMAGE, OVERLONG, DataError, RecordError, _where,
                                  malformed_message, parse_record, read_annotations)
from mixlora.data.templates import encode_segments, expand_image_tokens, get_template, image_token_id_of, \
    render_prompt, shift_span
from mixlora.options import check_choice

__all__ = ["CORRUPT_IMAGE", "MALFORMED", "MISSING_IMAGE", "ON_ERROR", "OVERLONG", "OVERLONG_POLICIES",
           "ConversationDataset", "DataError", "LengthGroupedBatchSampler", "PromptDataset", "RecordError",
           "TaskDefinitionDataset", "malformed_message", "parse_record", "read_annotations"]

logger = logging.getLogger(__name__)

ON_ERROR = ("skip", "raise")
_MAX_LISTED_PROBLEMS = 50


class _SharedCounter:
    """An integer counter shared with DataLoader worker processes (fork: shared memory; spawn: inherited).

    Pickled outside process start-up (e.g. deepcopy) it degrades to a private snapshot instead of failing.
    """

    def __init__(self, value: int = 0):
        self._shared = multiprocessing.Value("q", value)

    def increment(self):
        with self._shared.get_lock():
            self._shared.value += 1

    @property
    def value(self) -> int:
        return int(self._shared.value)

    def __getstate__(self):
        return {"shared": self._shared} if get_spawning_popen() is not None else {"snapshot": self.value}

    def __setstate__(self, state):
        self._shared = state["shared"] if "shared" in state else multiprocessing.Value("q", state["snapshot"])


class ConversationDataset(Dataset):
    """Vision-Flan / LLaVA instruction-tuning data, tokenised with a template; images decoded lazily.

    Each item: ``{"input_ids": long[L], "labels": long[L], "pixel_values": float[3, S, S], "task_name": str,
    "index": int}`` where L counts ``num_image_tokens`` copies of the ``<image>`` id (labels IGNORE_INDEX there)
    and ``index`` is the record's position in the JSON list.

    Args:
        annotations: path of the JSON list.
        image_folder: folder the records' ``image`` paths are relative to (default: the JSON file's folder).
        tokenizer: a HF tokenizer with ``<image>``, BOS and EOS (``build_tokenizer`` / ``load_tokenizer``).
        image_processor: an :class:`~mixlora.data.images.ImageProcessor`.
        num_image_tokens: N, the vision tower's patch count (64 tiny, 256 for CLIP ViT-L/14-224).
        template: ``"vicuna_v1"`` (paper training), ``"llava_v1"`` or ``"plain"``.
        max_length: maximum sequence length, image positions included.
        overlong: ``"truncate_answer"`` cuts the sequence at max_length after the prompt (image tokens and the
            prompt are never cut; the cut answer gets no ``</s>``, so the model is not taught to stop mid-answer)
            and skips samples whose prompt alone does not fit; ``"skip"`` drops over-long samples; ``"error"``
            raises. Truncated and skipped samples are counted in :meth:`report`.
        on_error: what to do with malformed records, missing and corrupt images: ``"skip"`` (count, log, go on)
            or ``"raise"`` (:class:`DataError`). Malformed records and missing files are found up front; a
            corrupt image is found when read: with ``"skip"`` the item is replaced by the next readable sample
            (position ``i+1``, ``i+2``, ... wrapping around; at most ``max_replacements`` tries), counted in
            ``report()["replaced"]`` (shared across DataLoader workers) and logged with its record.
        check_images: check up front that every image file exists (a ``stat`` per record).
        default_task_name: task name for records without ``task_name`` (None: such records are malformed).
        cache_dir, num_proc: passed to ``datasets`` (JSON parse and tokenisation are cached there).
        instruction_spans: items also carry ``instruction_span`` = ``(start, end)`` token positions of the first
            user turn's instruction (after image expansion; None when the record has none), for MixLoRA's
            ``routing_tokens="instruction"``. Needs a fast tokenizer.
        image_memory_mb: keep up to this many MiB of processed images in memory (per process and DataLoader
            worker; :class:`~mixlora.data.images.ImageMemo`), so later epochs do not decode those files again.
            0: off (every read decodes the file). The pixels are the same either way.
    """

    def __init__(self, annotations: str, tokenizer, image_processor, num_image_tokens: int,
                 image_folder: str | None = None, template: str = "vicuna_v1", max_length: int = 2048,
                 overlong: str = "truncate_answer", on_error: str = "skip", check_images: bool = True,
                 default_task_name: str | None = None, max_replacements: int = 16, cache_dir: str | None = None,
                 num_proc: int | None = None, instruction_spans: bool = False, image_memory_mb: float = 0):
        check_choice("overlong", overlong, OVERLONG_POLICIES)
        check_choice("on_error", on_error, ON_ERROR)
        get_template(template)
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        if max_length <= num_image_tokens:
            raise ValueError(f"max_length={max_length} leaves no room for text after {num_image_tokens} image tokens")
        self.annotations = str(annotations)
        if not Path(self.annotations).is_file():
            raise FileNotFoundError(f"annotation file {self.annotations!r} does not exist")
        self.image_folder = Path(image_folder) if image_folder is not None else Path(self.annotations).parent
        self.image_processor = image_processor
        if image_memory_mb < 0:
            raise ValueError(f"image_memory_mb must be >= 0 (0 = off), got {image_memory_mb}")
        self._images = ImageMemo(image_processor, image_memory_mb) if image_memory_mb else image_processor
        self.num_image_tokens = num_image_tokens
        self.image_token_id = image_token_id_of(tokenizer)
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; answers end with it (build_tokenizer/load_tokenizer)")
        self.on_error = on_error
        self.max_replacements = max_replacements

        raw = read_annotations(self.annotations, cache_dir)
        encode = functools.partial(
            _encode_batch, source=self.annotations, template=template, tokenizer=tokenizer,
            num_image_tokens=num_image_tokens, max_length=max_length, overlong=overlong,
            default_task_name=default_task_name, instruction_spans=instruction_spans)
        self.instruction_spans = instruction_spans
        fingerprint = _encoding_fingerprint(raw, tokenizer, template, self.annotations, num_image_tokens,
                                            max_length, overlong, default_task_name, instruction_spans)
        rows = raw.map(encode, batched=True, with_indices=True, remove_columns=raw.column_names,
                       num_proc=num_proc, desc=f"Tokenising {Path(self.annotations).name}",
                       new_fingerprint=fingerprint)
        status = list(rows["status"])
        messages = list(rows["message"])  # one column read: element access on a datasets Column is slow
        problems = [messages[i] for i, s in enumerate(status) if s not in (_OK, _TRUNCATED)]
        # Truncated samples are kept, so they are not "problems", but the warning about them shows one of them.
        self._first_truncated = next((messages[i] for i, s in enumerate(status) if s == _TRUNCATED), None)
        self._raise_if(on_error == "raise", [messages[i] for i, s in enumerate(status) if s == MALFORMED])
        self._raise_if(overlong == "error", [messages[i] for i, s in enumerate(status) if s == OVERLONG])

        images = list(rows["image"])
        if check_images:
            missing = []
            for i in tqdm([i for i, s in enumerate(status) if s in (_OK, _TRUNCATED) and images[i] is not None],
                          desc="Checking image files", mininterval=2.0,
                          disable=True if len(status) < 5000 else None):  # None: off unless on a terminal
                path = self.image_folder / images[i]
                if not path.is_file():
                    status[i] = MISSING_IMAGE
                    missing.append(f"{_where(self.annotations, rows[i]['index'], rows[i]['task_name'])}: image "
                                   f"file {str(path)!r} does not exist. Check image_folder (records' 'image' paths "
                                   "are relative to it) or run data/prepare_vision_flan.py to list missing files.")
            self._raise_if(on_error == "raise", missing)
            problems += missing

        kept = [i for i, s in enumerate(status) if s in (_OK, _TRUNCATED)]
        if not kept:
            raise DataError(f"{self.annotations}: no usable samples out of {len(status)} records; first problems: "
                            + " | ".join(problems[:3]))
        self._rows = rows.select(kept)
        self.lengths = list(self._rows["length"])
        counts = Counter(status)
        self._report = {
            "annotations": self.annotations,
            "records": len(status),
            "samples": len(kept),
            "text_only": sum(images[i] is None for i in kept),
            "truncated": counts[_TRUNCATED],
            "skipped": {kind: counts[kind] for kind in (MALFORMED, MISSING_IMAGE, OVERLONG)},
            "problems": problems[:_MAX_LISTED_PROBLEMS],
        }
        self._replaced = _SharedCounter()
        self._bad: set[int] = set()  # positions found unreadable in this process
        self._log_summary()

    @staticmethod
    def _raise_if(condition: bool, messages: list[str]) -> None:
        if condition and messages:
            more = f" (and {len(messages) - 1} more such problems)" if len(messages) > 1 else ""
            raise DataError(messages[0] + more)

    def _log_summary(self):
        r = self._report
        skipped = sum(r["skipped"].values())
        summary = (f"{Path(self.annotations).name}: {r['records']} records -> {r['samples']} samples "
                   f"({r['text_only']} text-only, {r['truncated']} truncated); skipped {skipped}: "
                   + ", ".join(f"{k}={v}" for k, v in r["skipped"].items()))
        if skipped or r["truncated"]:
            # Every skipped kind leaves a problem message, and every truncation a message of its own.
            examples = [f"first problem: {r['problems'][0]}"] if r["problems"] else []
            examples += [f"first truncated: {self._first_truncated}"] if self._first_truncated else []
            logger.warning("%s; %s", summary, "; ".join(examples))
        else:
            logger.info(summary)

    def report(self) -> dict:
        """Counts of what loading did: records, samples, text_only, truncated, skipped{kind: n}, replaced
        {corrupt_image: n} and the first problem messages. ``replaced`` counts every time an unreadable image
        was skipped for another sample so far, in this process and all its DataLoader workers (so one bad file
        is counted once per read, e.g. once per epoch)."""
        return {**self._report, "replaced": {CORRUPT_IMAGE: self._replaced.value}}

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def task_names(self) -> list[str]:
        """``task_name`` of every sample, in sample order (for checks such as task-definition coverage)."""
        return list(self._rows["task_name"])

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        for attempt in range(self.max_replacements + 1):
            position = (i + attempt) % n
            if position in self._bad:  # known unreadable in this process: skip without re-reading the file
                self._replaced.increment()
                continue
            row = self._rows[position]
            try:
                pixel_values = self._pixels(row)
            except IMAGE_ERRORS as err:
                message = (f"{_where(self.annotations, row['index'], row['task_name'])}: cannot read image "
                           f"{str(self.image_folder / row['image'])!r} ({type(err).__name__}: {err})")
                if self.on_error == "raise":
                    raise DataError(message + ". Replace the file, drop the record with "
                                    "data/prepare_vision_flan.py --check-images, or use on_error='skip'.") from err
                self._bad.add(position)
                self._replaced.increment()
                logger.warning("%s; using the next sample instead (on_error='skip')", message)
                continue
            return self._sample(row, pixel_values)
        raise DataError(f"{self.annotations}: {self.max_replacements + 1} consecutive samples from position {i} "
                        "have unreadable images; run data/prepare_vision_flan.py --check-images to find them")

    def _pixels(self, row) -> torch.Tensor:
        if row["image"] is None:
            return self.image_processor.blank()
        return self._images.load(self.image_folder / row["image"])

    def _sample(self, row, pixel_values) -> dict:
        ids, labels = expand_image_tokens(row["input_ids"], row["labels"], self.image_token_id, self.num_image_tokens)
        sample = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": pixel_values,
            "task_name": row["task_name"],
            "index": row["index"],
        }
        if self.instruction_spans:
            span = (row["instruction_start"], row["instruction_end"]) if row["instruction_start"] >= 0 else None
            sample["instruction_span"] = shift_span(span, row["input_ids"], self.image_token_id,
                                                    self.num_image_tokens)
        return sample


class TaskDefinitionDataset(Dataset):
    """A training dataset whose samples also carry their task's definition, for task routing.

    Each item is the wrapped item plus ``definition_key`` (= its ``task_name``) and ``definition_ids`` (the
    definition prompt's ids from ``encode``, e.g. a :class:`mixlora.data.definitions.DefinitionEncoder`), so the
    collators append one definition row per task of a batch (``mixlora.data.collator``).

    Args:
        dataset: items with ``task_name`` (e.g. :class:`ConversationDataset`).
        encode: ``encode(task_name) -> list[int]``.
        task_names: every task name the dataset holds; each is encoded here, up front, so a missing or
            over-long definition fails before training instead of inside a DataLoader worker.
    """

    def __init__(self, dataset: Dataset, encode, task_names):
        self.dataset = dataset
        self._ids = {name: list(encode(name)) for name in sorted(set(task_names))}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.dataset[i])
        name = item["task_name"]
        if name not in self._ids:
            raise DataError(f"sample {i} has task {name!r}, which was not among the task names given to "
                            "TaskDefinitionDataset; pass every task name of the dataset")
        item["definition_key"] = name
        item["definition_ids"] = self._ids[name]
        return item


class PromptDataset(Dataset):
    """Generation samples from a JSONL file, by default the released evaluation format::

        {"unique_id": "...", "prompt": "Is the sky blue?\\n[Options]: yes, no", "target": "yes",
         "image_path": "/data/x.jpg"}

    The question is ``prompt`` with ``"[Options]"`` replaced by ``"Options"`` (``replace_options``), with
    ``strip_suffix`` removed from its end when present, then ``suffix_separator + prompt_suffix`` appended
    (e.g. ``prompt_suffix="Answer the question using a single word or phrase."``). It is rendered with
    ``template`` up to ``"ASSISTANT:"`` (the released evaluation used ``llava_v1``) with the image in front.

    Each item: ``{"input_ids": long[L], "pixel_values": float[3, S, S], "task_name": str, "index": int,
    "record": dict}`` where ``record`` is the JSON line as read (for the scorer: targets, ids, ...).
    Field names are configurable (``prompt_field``, ``image_field``, ``id_field``) so the same loader reads the
    MME / CV-Bench files written by ``data/prepare_mme.py`` / ``data/prepare_cvbench.py``
    (``prompt_field="question"``, ``id_field="question_id"`` or ``"idx"``).

    Records are checked up front (JSON, required fields, image file exists); ``on_error="skip"`` drops bad
    lines and counts them in :meth:`report`, ``"raise"`` stops at the first. An image that exists but cannot be
    decoded always raises when read (replacing evaluation samples would change the score).
    """

    def __init__(self, path: str, tokenizer, image_processor, num_image_tokens: int, template: str = "llava_v1",
                 task_name: str | None = None, image_root: str | None = None, prompt_field: str = "prompt",
                 image_field: str = "image_path", id_field: str = "unique_id", replace_options: bool = True,
                 strip_suffix: str = "", prompt_suffix: str = "", suffix_separator: str = "\n",
                 on_error: str = "raise"):
        check_choice("on_error", on_error, ON_ERROR)
        self.path = str(path)
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"evaluation file {self.path!r} does not exist")
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        self.task_name = task_name if task_name is not None else Path(self.path).stem
        self.image_root = Path(image_root) if image_root is not None else Path(self.path).parent
        self.image_processor = image_processor
        self.num_image_tokens = num_image_tokens
        image_token_id = image_token_id_of(tokenizer)
        chat = get_template(template)
        self._items, problems = [], []
        with open(self.path, encoding="utf-8") as f:
            lines = list(enumerate(f, start=1))
        for line_no, line in tqdm(lines, desc=f"Reading {Path(self.path).name}", mininterval=2.0,
                                  disable=True if len(lines) < 5000 else None):  # None: only on a terminal
            if not line.strip():
                continue
            where = f"{self.path}:{line_no} (task {self.task_name!r})"
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"line holds a {type(record).__name__}, expected a JSON object")
                for field in (id_field, prompt_field, image_field):
                    if field not in record:
                        raise ValueError(f"missing field {field!r}")
                question, image = record[prompt_field], record[image_field]
                if not isinstance(question, str) or not isinstance(image, str) or not image:
                    raise ValueError(f"{prompt_field!r} and {image_field!r} must be non-empty strings")
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                problems.append(f"{where}: {err}. Fix the line or load with on_error='skip'.")
                self._raise_if(on_error == "raise", problems)
                continue
            image_path = self.image_root / image
            if not image_path.is_file():
                problems.append(f"{where}: image {str(image_path)!r} does not exist. Check image_root "
                                "(relative image paths are resolved against it).")
                self._raise_if(on_error == "raise", problems)
                continue
            if replace_options:
                question = question.replace("[Options]", "Options")
            if strip_suffix and question.rstrip().endswith(strip_suffix):
                question = question.rstrip()[: -len(strip_suffix)].rstrip()
            if prompt_suffix:
                question = question + suffix_separator + prompt_suffix
            ids, _ = encode_segments(render_prompt(chat, question, with_image=True), tokenizer)
            ids, _ = expand_image_tokens(ids, ids, image_token_id, num_image_tokens)
            self._items.append((ids, image_path, record, line_no))
        self._report = {"path": self.path, "task_name": self.task_name, "samples": len(self._items),
                        "skipped": len(problems), "problems": problems[:_MAX_LISTED_PROBLEMS]}
        if problems:
            logger.warning("%s: skipped %d bad lines; first: %s", self.path, len(problems), problems[0])

    @staticmethod
    def _raise_if(condition: bool, messages: list[str]) -> None:
        if condition and messages:
            raise DataError(messages[-1])

    def report(self) -> dict:
        """``{"path", "task_name", "samples", "skipped", "problems"}``."""
        return dict(self._report)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> dict:
        ids, image_path, record, line_no = self._items[i]
        try:
            pixel_values = self.image_processor.load(image_path)
        except IMAGE_ERRORS as err:
            raise DataError(f"{self.path}:{line_no} (task {self.task_name!r}): cannot read image {str(image_path)!r} "
                            f"({type(err).__name__}: {err}). Replace the file or drop the line.") from err
        return {"input_ids": torch.tensor(ids, dtype=torch.long), "pixel_values": pixel_values,
                "task_name": self.task_name, "index": i, "record": record}
