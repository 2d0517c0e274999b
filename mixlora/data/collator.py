"""Batch collation: right padding for training, left padding for generation (the data/model contract).

Training batch (``TrainingCollator``), B samples padded to the longest length L on the right:
    input_ids       long [B, L]   pad_token_id on padding
    attention_mask  long [B, L]   1 = real token
    labels          long [B, L]   IGNORE_INDEX on padding and everything unsupervised (incl. image positions)
    routing_mask    bool [B, L]   real tokens strictly before the sample's first supervised label
                                  (system + image + instruction + "ASSISTANT:"; never padding or answers);
                                  all real tokens for a sample with no supervised label
    pixel_values    float [B, 3, H, W]
    task_name, index              lists of length B

Generation batch (``GenerationCollator``), prompts padded on the LEFT so every prompt ends at position L-1:
    input_ids, attention_mask, routing_mask (= attention_mask.bool()), pixel_values, and every other
    sample key (task_name, index, record, ...) as a list.

Masks come from the sample lengths, never from comparing ids with pad_token_id (pad may equal unk or eos).
"""

from __future__ import annotations

import torch

from mixlora.constants import IGNORE_INDEX

TRAINING_KEYS = ("input_ids", "attention_mask", "labels", "routing_mask", "pixel_values", "task_name", "index")


def _padded_length(lengths, multiple: int | None) -> int:
    longest = max(lengths)
    if multiple:
        longest = -(-longest // multiple) * multiple
    return longest


def _check(samples, keys) -> None:
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    for n, sample in enumerate(samples):
        missing = [k for k in keys if k not in sample]
        if missing:
            raise KeyError(f"sample {n} of the batch lacks {missing}; it has {sorted(sample)}")


class TrainingCollator:
    """Right-pad training samples ``{"input_ids", "labels", "pixel_values", "task_name", "index"}``.

    Args:
        pad_token_id: id written into padding positions (``tokenizer.pad_token_id``).
        pad_to_multiple_of: round L up to a multiple of this (e.g. 8 for tensor cores); None = longest sample.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; give the tokenizer a pad token (load_tokenizer does)")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, samples: list[dict]) -> dict:
        _check(samples, ("input_ids", "labels", "pixel_values", "task_name", "index"))
        lengths = [len(s["input_ids"]) for s in samples]
        width = _padded_length(lengths, self.pad_to_multiple_of)
        batch = len(samples)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        routing_mask = torch.zeros((batch, width), dtype=torch.bool)
        for b, (sample, n) in enumerate(zip(samples, lengths)):
            if len(sample["labels"]) != n:
                raise ValueError(f"sample {b} (task {sample['task_name']!r}, index {sample['index']}) has "
                                 f"{n} input_ids but {len(sample['labels'])} labels")
            input_ids[b, :n] = torch.as_tensor(sample["input_ids"], dtype=torch.long)
            labels[b, :n] = torch.as_tensor(sample["labels"], dtype=torch.long)
            attention_mask[b, :n] = 1
            supervised = (labels[b, :n] != IGNORE_INDEX).nonzero()
            first = int(supervised[0]) if len(supervised) else n
            routing_mask[b, :first] = True
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "routing_mask": routing_mask,
            "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
            "task_name": [s["task_name"] for s in samples],
            "index": [s["index"] for s in samples],
        }


class GenerationCollator:
    """Left-pad prompt-only samples ``{"input_ids", "pixel_values", ...}`` for ``model.generate``.

    Args:
        pad_token_id: id written into padding positions.
    """

    def __init__(self, pad_token_id: int):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; give the tokenizer a pad token (load_tokenizer does)")
        self.pad_token_id = int(pad_token_id)

    def __call__(self, samples: list[dict]) -> dict:
        _check(samples, ("input_ids", "pixel_values"))
        lengths = [len(s["input_ids"]) for s in samples]
        width = max(lengths)
        input_ids = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
        for b, (sample, n) in enumerate(zip(samples, lengths)):
            input_ids[b, width - n :] = torch.as_tensor(sample["input_ids"], dtype=torch.long)
            attention_mask[b, width - n :] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "routing_mask": attention_mask.bool(),
            "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        }
        for key in samples[0]:
            if key not in batch:
                batch[key] = [s.get(key) for s in samples]
        return batch
