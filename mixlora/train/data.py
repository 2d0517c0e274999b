"""Training data for a run: synthetic-suite generation, the dataset, and a resumable micro-batch stream.

Data order is a pure function of (seed, epoch): ``LengthGroupedBatchSampler`` shuffles with ``seed + epoch``,
so the position "epoch e, k micro-batches consumed" identifies the next batch exactly, and resuming skips the
first k index lists of epoch e without loading them. Each epoch is cut to a whole number of optimiser steps
(``len(sampler) // accumulation * accumulation`` micro-batches per rank); the few left over are not used.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .settings import ConfigError, DataSettings

logger = logging.getLogger(__name__)


def ensure_synthetic(data: DataSettings) -> Optional[Path]:
    """Generate the synthetic suite into the annotations' folder when ``data.generate`` is set and the file is
    missing; returns the folder generated (None when nothing was done). ``mixlora.data.synthetic.ensure_suite``:
    built in a temporary sibling folder and renamed into place, so a concurrent or interrupted generation never
    leaves a half-written suite, and a folder holding anything else is an error (ConfigError), left as it is."""
    annotations = Path(data.annotations)
    if data.generate is None or annotations.is_file():
        return None
    from mixlora.data.synthetic import SUITE_FILES, IncompleteSuiteError, ensure_suite

    if annotations.name not in SUITE_FILES:  # checked first: the suite would be generated but not hold the file
        raise ConfigError(f"data.annotations={str(annotations)!r} is missing and the synthetic suite would not "
                          f"create it (it writes {', '.join(SUITE_FILES)}); data.annotations must name its "
                          "train.json, or set data.generate=null")
    target = annotations.parent
    try:
        generated = ensure_suite(target, **data.generate)
    except IncompleteSuiteError as err:
        raise ConfigError(f"data.annotations={str(annotations)!r} is missing, and the synthetic suite cannot be "
                          f"generated there: {err}") from err
    return target if generated else None


def check_data_paths(data: DataSettings) -> None:
    """Clear errors for a missing, unreadable or empty annotation file or a missing image folder (after any
    generation)."""
    annotations = Path(data.annotations)
    if not annotations.is_file():
        raise ConfigError(f"data.annotations: training file {str(annotations)!r} does not exist; prepare it "
                          "(data/prepare_vision_flan.py for Vision-Flan; python data/make_synthetic.py --out "
                          "data/synthetic --seed 0 for the synthetic suite, or set data.generate) or fix the path")
    from mixlora.data.dataset import DataError, read_annotations

    try:  # read as the dataset reads it (cached for it), so a broken or empty file stops before any work
        read_annotations(annotations, data.cache_dir)
    except DataError as err:
        raise ConfigError(f"data.annotations: {err}") from err
    if data.image_folder is not None and not Path(data.image_folder).is_dir():
        raise ConfigError(f"data.image_folder: image folder {data.image_folder!r} does not exist; set "
                          "data.image_folder to the folder the records' `image` paths are relative to")
    if data.task_definitions is not None:
        check_task_definitions(data)


def annotation_task_names(path: str | Path, default_task_name: Optional[str] = None) -> list[str]:
    """The distinct ``task_name`` values of a training JSON list (or JSON Lines) file, sorted; records without
    one count as ``default_task_name`` when it is set (malformed records are the loader's to report)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ConfigError(f"data.annotations: {path} is neither a JSON list nor JSON Lines ({err})") from err
    if isinstance(records, dict):
        records = [records]
    names = set()
    for record in records if isinstance(records, list) else []:
        if isinstance(record, dict):
            name = record.get("task_name", default_task_name)
            if isinstance(name, str) and name.strip():
                names.add(name)
    return sorted(names)


def check_task_definitions(data: DataSettings) -> dict[str, str]:
    """Load ``data.task_definitions`` and check that every task_name of the training file has a definition
    (ConfigError listing the missing names and the fix); returns {task_name: text}."""
    from mixlora.data.definitions import DefinitionError, load_definitions, missing_definitions, missing_message

    path = Path(data.task_definitions)
    if not path.is_file():
        raise ConfigError(f"data.task_definitions: file {str(path)!r} does not exist. The synthetic suite writes "
                          "task_definitions.json beside train.json (add it to a suite generated before it did with "
                          "`python data/make_synthetic.py --out DIR --only-definitions`); for Vision-Flan convert "
                          "the released table with `data/prepare_vision_flan.py --definitions TABLE`")
    try:
        definitions = load_definitions(path)
    except DefinitionError as err:
        raise ConfigError(f"data.task_definitions: {err}") from err
    missing = missing_definitions(annotation_task_names(data.annotations, data.default_task_name), definitions)
    if missing:
        raise ConfigError("data.task_definitions: " + missing_message(
            missing, path, f"task(s) of {data.annotations}",
            "Task routing routes every instance on its task's definition: add one entry task_name -> definition "
            "text per missing task to the file (or point data.task_definitions at a complete one)."))
    return definitions


def _task_names_of(dataset: Dataset) -> list[str]:
    """``task_name`` per sample of a ConversationDataset, through any Subset wrappers."""
    if isinstance(dataset, Subset):
        names = _task_names_of(dataset.dataset)
        return [names[i] for i in dataset.indices]
    return dataset.task_names


def with_task_definitions(dataset: Dataset, data: DataSettings, tokenizer) -> Dataset:
    """``dataset`` whose samples carry their task's definition prompt (``TaskDefinitionDataset``) when
    ``data.task_definitions`` is set, so the collator appends definition rows; else ``dataset`` unchanged."""
    if data.task_definitions is None:
        return dataset
    from mixlora.data.dataset import TaskDefinitionDataset
    from mixlora.data.definitions import DefinitionEncoder, DefinitionError

    definitions = check_task_definitions(data)
    try:
        encoder = DefinitionEncoder(definitions, tokenizer, data.template, max_length=data.max_length)
        return TaskDefinitionDataset(dataset, encoder, _task_names_of(dataset))
    except DefinitionError as err:
        raise ConfigError(f"data.task_definitions: {err}") from err


def select_tasks(task_names: list[str], patterns: list[str], source: str = "the training set") -> list[int]:
    """Positions ``i`` whose ``task_names[i]`` matches at least one of ``patterns`` (``data.tasks``).

    Matching is :func:`fnmatch.fnmatchcase` on lower-cased strings: shell wildcards (``*``, ``?``, ``[...]``),
    otherwise the whole name must be equal, ignoring case. A pattern that matches no sample is a ConfigError
    naming the tasks that are there: a typo would otherwise silently train on fewer tasks than intended.
    """
    names = [n.lower() for n in task_names]
    keep: set[int] = set()
    unmatched = []
    for pattern in patterns:
        hits = [i for i, n in enumerate(names) if fnmatch.fnmatchcase(n, pattern.lower())]
        if not hits:
            unmatched.append(pattern)
        keep.update(hits)
    if unmatched:
        available = sorted(set(task_names))
        shown = ", ".join(available[:40]) + (f", ... ({len(available)} tasks)" if len(available) > 40 else "")
        raise ConfigError(f"data.tasks: pattern(s) {unmatched} match no task_name in {source}; tasks there: "
                          f"{shown}. Fix the pattern (shell wildcards such as 'coco+*', case-insensitive) or "
                          "set data.tasks=null to train on every task")
    return sorted(keep)


def build_dataset(data: DataSettings, tokenizer, image_processor, num_image_tokens: int, seed: int,
                  instruction_spans: bool = False):
    """``ConversationDataset``, restricted to ``data.tasks`` (if set), then a seeded subset of ``max_samples``,
    with each sample's task definition attached when ``data.task_definitions`` is set; returns (dataset, lengths).
    ``instruction_spans``: samples carry their instruction's token span (``routing_tokens="instruction"``)."""
    from mixlora.data.dataset import ConversationDataset

    if data.max_length <= num_image_tokens:  # known only now: the image token count is the model's
        raise ConfigError(f"data.max_length={data.max_length} leaves no room for text: every sample holds the model's "
                          f"{num_image_tokens} image positions; raise data.max_length well above {num_image_tokens} "
                          "(configs/data/synthetic.yaml has 256 for the tiny stack's 64)")
    ds = ConversationDataset(data.annotations, tokenizer, image_processor, num_image_tokens,
                             image_folder=data.image_folder, template=data.template, max_length=data.max_length,
                             overlong=data.overlong, on_error=data.on_error, check_images=data.check_images,
                             cache_dir=data.cache_dir, default_task_name=data.default_task_name,
                             instruction_spans=instruction_spans, image_memory_mb=data.image_memory_mb)
    lengths = list(ds.lengths)
    if data.tasks is not None:
        chosen = select_tasks(ds.task_names, data.tasks, source=data.annotations)
        logger.info("data.tasks=%s: %d of %d samples", data.tasks, len(chosen), len(ds))
        ds, lengths = Subset(ds, chosen), [lengths[i] for i in chosen]
    if data.max_samples is not None and data.max_samples < len(ds):
        keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[: data.max_samples]
        keep = sorted(keep.tolist())
        ds, lengths = Subset(ds, keep), [lengths[i] for i in keep]
    return with_task_definitions(ds, data, tokenizer), lengths


class _Slice(Sampler[list[int]]):
    """Index lists ``start:stop`` of one epoch of a batch sampler (skipping costs nothing: no data is loaded)."""

    def __init__(self, batches: list[list[int]], start: int, stop: int):
        self.batches = batches[start:stop]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class MicroBatchStream:
    """An endless stream of collated micro-batches for one rank, resumable at (epoch, batch_in_epoch).

    Args:
        dataset, lengths: the training set and its sequence lengths.
        micro_batch_size: samples per micro-batch; accumulation: micro-batches per optimiser step.
        rank, world: this rank's share (batches dealt round-robin by the sampler).
        collate_fn, num_workers, pin_memory: DataLoader options.
        seed: sampler seed (epoch e shuffles with seed + e).
    """

    def __init__(self, dataset: Dataset, lengths: list[int], micro_batch_size: int, accumulation: int, rank: int,
                 world: int, collate_fn, seed: int, num_workers: int = 0, pin_memory: bool = False):
        from mixlora.data.dataset import LengthGroupedBatchSampler

        self.dataset = dataset
        self.sampler = LengthGroupedBatchSampler(lengths, micro_batch_size, seed=seed, num_replicas=world, rank=rank)
        self.accumulation = accumulation
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.usable = len(self.sampler) // accumulation * accumulation
        if self.usable == 0:
            raise ConfigError(f"the training set gives {len(self.sampler)} micro-batches per process per epoch, fewer "
                              f"than one optimiser step needs ({accumulation}); use more data or a smaller "
                              "trainer.global_batch_size")

    @property
    def steps_per_epoch(self) -> int:
        return self.usable // self.accumulation

    def iterate(self, epoch: int, batch_in_epoch: int) -> Iterator[tuple[int, int, dict]]:
        """Yield ``(epoch, micro-batches consumed in it after this one, batch)`` from the given position on."""
        while True:
            if batch_in_epoch >= self.usable:
                epoch, batch_in_epoch = epoch + 1, 0
            self.sampler.set_epoch(epoch)
            batches = list(self.sampler)
            # A private generator: creating a DataLoader iterator would otherwise draw from the global torch RNG,
            # which a resumed run (restored RNG, loader created mid-epoch) would then not reproduce.
            loader = DataLoader(self.dataset, batch_sampler=_Slice(batches, batch_in_epoch, self.usable),
                                collate_fn=self.collate_fn, num_workers=self.num_workers, pin_memory=self.pin_memory,
                                generator=torch.Generator().manual_seed(epoch))
            for batch in loader:
                batch_in_epoch += 1
                yield epoch, batch_in_epoch, batch
            epoch, batch_in_epoch = epoch + 1, 0


def probe_batch(dataset: Dataset, size: int, collate_fn) -> dict:
    """The first ``size`` samples in index order, collated: a fixed batch for the end-of-run check loss."""
    return collate_fn([dataset[i] for i in range(min(size, len(dataset)))])
