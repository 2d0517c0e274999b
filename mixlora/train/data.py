"""Training data for a run: synthetic-suite generation, the dataset, and a resumable micro-batch stream.

Data order is a pure function of (seed, epoch): ``LengthGroupedBatchSampler`` shuffles with ``seed + epoch``,
so the position "epoch e, k micro-batches consumed" identifies the next batch exactly, and resuming skips the
first k index lists of epoch e without loading them. Each epoch is cut to a whole number of optimiser steps
(``len(sampler) // accumulation * accumulation`` micro-batches per rank); the few left over are not used.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .settings import ConfigError, DataSettings

logger = logging.getLogger(__name__)


def ensure_synthetic(data: DataSettings) -> Optional[Path]:
    """Generate the synthetic suite into the annotations' folder when ``data.generate`` is set and the file is
    missing; returns the folder generated (None when nothing was done). Written to a temporary sibling folder
    and renamed into place, so a concurrent or interrupted generation never leaves a half-written suite."""
    annotations = Path(data.annotations)
    if data.generate is None or annotations.is_file():
        return None
    from mixlora.data.synthetic import generate_suite

    target = annotations.parent
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"data.annotations={str(annotations)!r} is missing but its folder {target} is not empty; "
                          "delete the folder to regenerate the synthetic suite, or fix the path")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    logger.info("generating the synthetic suite into %s (%s)", target, data.generate)
    generate_suite(tmp, **data.generate)
    if not (tmp / annotations.name).is_file():
        shutil.rmtree(tmp)
        raise ConfigError(f"the synthetic suite has no {annotations.name}; data.annotations must name its train.json")
    try:
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(tmp, target)
    except OSError:
        if not annotations.is_file():  # nobody else finished it either
            raise
        shutil.rmtree(tmp)  # another process generated it meanwhile; keep theirs
    return target


def check_data_paths(data: DataSettings) -> None:
    """Clear errors for a missing annotation file or image folder (after any generation)."""
    annotations = Path(data.annotations)
    if not annotations.is_file():
        raise ConfigError(f"data.annotations: training file {str(annotations)!r} does not exist; prepare it "
                          "(data/prepare_vision_flan.py for Vision-Flan; python data/make_synthetic.py --out "
                          "data/synthetic --seed 0 for the synthetic suite, or set data.generate) or fix the path")
    if data.image_folder is not None and not Path(data.image_folder).is_dir():
        raise ConfigError(f"data.image_folder: image folder {data.image_folder!r} does not exist; set "
                          "data.image_folder to the folder the records' `image` paths are relative to")


def build_dataset(data: DataSettings, tokenizer, image_processor, num_image_tokens: int, seed: int):
    """``ConversationDataset`` (+ a seeded subset of ``max_samples``); returns (dataset, lengths)."""
    from mixlora.data.dataset import ConversationDataset

    ds = ConversationDataset(data.annotations, tokenizer, image_processor, num_image_tokens,
                             image_folder=data.image_folder, template=data.template, max_length=data.max_length,
                             overlong=data.overlong, on_error=data.on_error, check_images=data.check_images,
                             cache_dir=data.cache_dir, default_task_name=data.default_task_name)
    lengths = list(ds.lengths)
    if data.max_samples is not None and data.max_samples < len(ds):
        keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[: data.max_samples]
        keep = sorted(keep.tolist())
        return Subset(ds, keep), [lengths[i] for i in keep]
    return ds, lengths


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
