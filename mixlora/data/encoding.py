"""Tokenisation and masking of training records, with the over-length policy, as a ``datasets.map`` function; and
the cache key of the tokenised rows (``datasets`` stores them, so a second load of the same file with the same
tokenizer and settings does not tokenise again)."""

from __future__ import annotations

import json

from mixlora.constants import IGNORE_INDEX
from mixlora.data.records import MALFORMED, OVERLONG, _where, malformed_message, parse_record
from mixlora.data.templates import encode_segments, get_template, render_conversation

OVERLONG_POLICIES = ("truncate_answer", "skip", "error")
_OK, _TRUNCATED = "ok", "truncated"


def _encode_batch(batch, indices, *, source, template, tokenizer, num_image_tokens, max_length, overlong,
                  default_task_name, instruction_spans=False):
    """datasets.map function: validate, render, tokenise and apply the over-length policy to a batch.
    ``instruction_spans``: also store the instruction's token span (``instruction_start``/``_end``, -1 = none)."""
    columns = ("index", "task_name", "image", "input_ids", "labels", "length", "status", "message")
    if instruction_spans:
        columns += ("instruction_start", "instruction_end")
    out = {name: [] for name in columns}
    keys = list(batch)
    for j, index in enumerate(indices):
        record = {key: batch[key][j] for key in keys}
        raw_task = record.get("task_name")
        row = dict(index=index, task_name=raw_task if isinstance(raw_task, str) else "", image=None, input_ids=[],
                   labels=[], length=0, status=_OK, message="", instruction_start=-1, instruction_end=-1)
        try:
            task_name, image, turns = parse_record(record, default_task_name)
            # Template-specific limits (e.g. plain takes one exchange) surface here as ValueError.
            segments = render_conversation(get_template(template), turns, with_image=True)
        except ValueError as err:  # RecordError is a ValueError
            row.update(status=MALFORMED, message=malformed_message(source, index, raw_task, err))
        else:
            row.update(task_name=task_name, image=image)
            if instruction_spans:
                ids, labels, span = encode_segments(segments, tokenizer, instruction=True)
                if span is not None:
                    row.update(instruction_start=span[0], instruction_end=span[1])
            else:
                ids, labels = encode_segments(segments, tokenizer)
            row.update(_apply_length_policy(ids, labels, num_image_tokens, max_length, overlong,
                                            _where(source, index, task_name)))
        for name in columns:
            out[name].append(row[name])
    return out


def _encoding_fingerprint(raw, tokenizer, template, *settings) -> str:
    """The cache key of the tokenised rows: the parsed file's own fingerprint, the tokenizer's full serialisation
    (vocabulary, merges, special tokens), every encoding setting, and the source of the code that encodes.

    ``datasets`` would hash the map function with the tokenizer inside it, but a fast tokenizer's hash changes
    once it has been called (its padding/truncation state), so every run re-tokenised; this key is stable, and
    any change to what determines the rows changes it."""
    import hashlib
    import inspect

    from mixlora.data import templates

    h = hashlib.sha256()
    h.update(str(raw._fingerprint).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Padding and truncation are per-call state (reset by every call without them, as ours are): not the key.
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr((type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id, template,
                   settings)).encode())
    h.update(inspect.getsource(templates).encode())
    h.update(inspect.getsource(_encode_batch).encode() + inspect.getsource(_apply_length_policy).encode())
    return h.hexdigest()[:32]


def _apply_length_policy(ids, labels, num_image_tokens, max_length, overlong, where):
    """Length counts every image position (one image id -> N). Returns the row fields to update."""
    # Every sample holds exactly one image id (text-only ones too), always in the prompt, i.e. before the first
    # supervised token; it stands for N positions.
    extra = num_image_tokens - 1
    first = next((t for t, lab in enumerate(labels) if lab != IGNORE_INDEX), len(labels))
    length = len(ids) + extra
    if length <= max_length:
        return dict(input_ids=ids, labels=labels, length=length, status=_OK)
    prompt_length = first + extra
    if overlong == "truncate_answer" and prompt_length < max_length:
        cut = max_length - extra
        return dict(input_ids=ids[:cut], labels=labels[:cut], length=max_length, status=_TRUNCATED,
                    message=f"{where}: {length} tokens > max_length={max_length}; answer truncated")
    detail = (f"the prompt alone has {prompt_length} tokens (incl. {num_image_tokens} image tokens), so no answer "
              "token fits" if prompt_length >= max_length else f"{length} tokens")
    return dict(status=OVERLONG, length=length,
                message=f"{where}: {detail} > max_length={max_length}. Raise max_length, shorten the record, or "
                f"choose overlong='truncate_answer' or 'skip'.")
