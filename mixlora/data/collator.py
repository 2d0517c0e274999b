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
    instruction_mask bool [B, L]  only when the samples carry ``instruction_span`` (start, end): True on those
                                  positions, the first user turn's instruction (no system prompt, role tags, image
                                  or answer), for ``routing_tokens="instruction"``

Generation batch (``GenerationCollator``), prompts padded on the LEFT so every prompt ends at position L-1:
    input_ids, attention_mask, routing_mask (= attention_mask.bool()), pixel_values, instruction_mask (as above,
    shifted by each row's left padding), and every other sample key (task_name, index, record, ...) as a list.

Task-definition rows (task routing, ``mixlora.data.definitions``). When the samples carry ``definition_key``
(str) and ``definition_ids`` (the definition prompt's ids, no image), both collators append, after the B
instance rows, one row per distinct key in order of first appearance (K rows, B_total = B + K):
    input_ids, attention_mask   [B_total, L]  the definition prompt, padded like the instance rows
    labels                      [B_total, L]  IGNORE_INDEX on every definition row: they add no loss term and
                                              no token to the loss's denominator (HF's mean over labels != -100)
    routing_mask                [B_total, L]  every real token of a definition row (it is all prompt)
    instruction_mask            [B_total, L]  likewise every real token of a definition row
    source_rows                 long [B_total]  instance row b -> B + k of its key; definition row B + k -> itself
    definition_keys             list of K keys
    pixel_values                [B, 3, H, W]  instance rows only (definition rows hold no image tokens)
    task_name, index, ...       lists of length B (instance rows only)
E.g. tasks [a, b, a] -> rows [a0, b1, a2, def_a, def_b], source_rows = [3, 4, 3, 3, 4].

Masks come from the sample lengths, never from comparing ids with pad_token_id (pad may equal unk or eos).
"""

from __future__ import annotations

import torch

from mixlora.constants import IGNORE_INDEX

TRAINING_KEYS = ("input_ids", "attention_mask", "labels", "routing_mask", "pixel_values", "task_name", "index")
DEFINITION_KEYS = ("definition_key", "definition_ids")


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


def definition_rows(samples: list[dict]) -> tuple[list[str], list[list[int]], list[int]] | None:
    """(keys, ids per key, key index per sample) for samples carrying task definitions, or None when none do.

    Every sample must carry both ``definition_key`` and ``definition_ids`` or none of them; samples sharing a key
    must carry identical ids.
    """
    flags = [all(k in s for k in DEFINITION_KEYS) for s in samples]
    partial = [n for n, s in enumerate(samples) if any(k in s for k in DEFINITION_KEYS) and not flags[n]]
    if partial:
        raise KeyError(f"samples {partial} carry only one of {DEFINITION_KEYS}; a task-routed sample needs both")
    if not any(flags):
        return None
    if not all(flags):
        bare = [n for n, f in enumerate(flags) if not f]
        raise ValueError(f"samples {bare} carry no task definition while others do; under task routing every "
                         "sample needs its task's definition (wrap the dataset with TaskDefinitionDataset)")
    keys: list[str] = []
    ids: list[list[int]] = []
    position: dict[str, int] = {}
    rows = []
    for n, s in enumerate(samples):
        key = s["definition_key"]
        value = [int(t) for t in s["definition_ids"]]
        if not value:
            raise ValueError(f"sample {n}: the definition of {key!r} has no tokens")
        if key not in position:
            position[key] = len(keys)
            keys.append(key)
            ids.append(value)
        elif ids[position[key]] != value:
            raise ValueError(f"samples of task {key!r} carry different definition ids; one task has one definition")
        rows.append(position[key])
    return keys, ids, rows


def _instruction_mask(samples: list[dict], total: int, width: int, starts: list[int], extra_ids) -> torch.Tensor | None:
    """bool [total, width]: True on sample b's ``instruction_span`` shifted by ``starts[b]`` (its first position in
    the row), and on every token of the definition rows; None when no sample carries a span."""
    carried = ["instruction_span" in s for s in samples]
    if not any(carried):
        return None
    mask = torch.zeros((total, width), dtype=torch.bool)
    for b, sample in enumerate(samples):
        span = sample.get("instruction_span")
        if span is None:
            where = f"sample {b} (task {sample.get('task_name')!r}, index {sample.get('index')})"
            raise ValueError(f"{where} has no instruction tokens to route on"
                             + ("" if carried[b] else " (it carries no instruction_span while others do)")
                             + "; routing_tokens='instruction' needs a user instruction in every record")
        mask[b, starts[b] + span[0] : starts[b] + span[1]] = True
    for k, ids in enumerate(extra_ids):
        row = len(samples) + k
        mask[row, starts[row] : starts[row] + len(ids)] = True
    return mask


def _source_rows(batch: int, rows: list[int], n_keys: int) -> torch.Tensor:
    return torch.tensor([batch + k for k in rows] + [batch + k for k in range(n_keys)], dtype=torch.long)


class TrainingCollator:
    """Right-pad training samples ``{"input_ids", "labels", "pixel_values", "task_name", "index"}`` (plus
    ``definition_key``/``definition_ids`` under task routing: see the module docstring).

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
        definitions = definition_rows(samples)
        keys, extra_ids, rows = definitions if definitions is not None else ([], [], [])
        lengths = [len(s["input_ids"]) for s in samples]
        width = _padded_length(lengths + [len(i) for i in extra_ids], self.pad_to_multiple_of)
        batch = len(samples)
        total = batch + len(keys)
        input_ids = torch.full((total, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((total, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((total, width), dtype=torch.long)
        routing_mask = torch.zeros((total, width), dtype=torch.bool)
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
        for k, ids in enumerate(extra_ids):  # definition rows: all prompt, no label
            row, n = batch + k, len(ids)
            input_ids[row, :n] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[row, :n] = 1
            routing_mask[row, :n] = True
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "routing_mask": routing_mask,
            "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
            "task_name": [s["task_name"] for s in samples],
            "index": [s["index"] for s in samples],
        }
        instruction = _instruction_mask(samples, total, width, [0] * total, extra_ids)
        if instruction is not None:
            out["instruction_mask"] = instruction
        if definitions is not None:
            out["source_rows"] = _source_rows(batch, rows, len(keys))
            out["definition_keys"] = keys
        return out


class GenerationCollator:
    """Left-pad prompt-only samples ``{"input_ids", "pixel_values", ...}`` for ``model.generate`` (plus
    ``definition_key``/``definition_ids`` under task routing: see the module docstring).

    Args:
        pad_token_id: id written into padding positions.
    """

    def __init__(self, pad_token_id: int):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; give the tokenizer a pad token (load_tokenizer does)")
        self.pad_token_id = int(pad_token_id)

    def __call__(self, samples: list[dict]) -> dict:
        _check(samples, ("input_ids", "pixel_values"))
        definitions = definition_rows(samples)
        keys, extra_ids, rows = definitions if definitions is not None else ([], [], [])
        sequences = [s["input_ids"] for s in samples] + extra_ids
        lengths = [len(s) for s in sequences]
        width = max(lengths)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for b, (ids, n) in enumerate(zip(sequences, lengths)):
            input_ids[b, width - n :] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[b, width - n :] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "routing_mask": attention_mask.bool(),
            "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        }
        instruction = _instruction_mask(samples, len(sequences), width, [width - n for n in lengths], extra_ids)
        if instruction is not None:
            batch["instruction_mask"] = instruction
        if definitions is not None:
            batch["source_rows"] = _source_rows(len(samples), rows, len(keys))
            batch["definition_keys"] = keys
        for key in samples[0]:
            if key not in batch and key not in DEFINITION_KEYS and key != "instruction_span":
                batch[key] = [s.get(key) for s in samples]
        return batch
