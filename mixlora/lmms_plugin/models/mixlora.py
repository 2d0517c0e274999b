"""``MixLoRA``: an lmms-eval model class for our run directories (``--model mixlora``).

lmms-eval's model interface (``lmms_eval.api.model.lmms``; docs/benchmarks.md#lmms-eval), as implemented here:

- ``generate_until(requests) -> list[str]``: each request's ``args`` are
  ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``; the image is
  ``doc_to_visual(self.task_dict[task][split][doc_id])`` (a list of PIL images: exactly one is used, none gives
  a blank image as for text-only training records). The context goes through our template
  (``template=vicuna_v1`` by default) with the image in front, then ``mixlora.tasks.evaluate.generate_answers``:
  batched (``batch_size``) per lmms-eval task, left-padded, routing on the prompt. ``gen_kwargs``:
  ``max_new_tokens`` (default ``max_new_tokens`` of the model args), ``temperature`` (> 0 samples, else greedy),
  ``top_p``, ``until`` (stop strings, cut from the decoded text). Beam search is refused (MixLoRA routes per
  instance).
- ``loglikelihood(requests) -> list[(log p(continuation | context), is_greedy)]``: args
  ``(context, doc_to_target, doc_to_visual, doc_id, task, split)``, continuation = ``doc_to_target(doc)`` or the
  string itself; one forward over prompt + continuation, routing on the prompt tokens only
  (``routing_tokens="all"``: on every real token of the row, as the released batch-1 evaluation).
- ``generate_until_multi_round``: not supported (raises, as lmms-eval's own LLaVA class does).

Task routing (a run trained with ``adapter.routing_source=task``): each request routes on the definition of its
lmms-eval task, looked up under the task name (``args[4]``: ``mme``, ``pope_adv``, ``mixlora_synth_pope``) in the
definitions {key: text} of ``task_definitions=PATH`` (a ``task_definitions.json``; by default the run's
``data.task_definitions``, as eval.py). The rows are built by ``mixlora.tasks.evaluate`` itself
(``attach_definition``: one definition row per task of a batch, routing the instance rows at prefill); every task
of a call is checked first, and a task without a definition is an error naming it and the file to add it to.

Model args (``--model_args k=v,...``): ``run`` (a run directory, ``mixlora.build.load_run``) or, for the base
model, ``model_config`` (a ``configs/model/*.yaml``) + ``tokenizer_corpus`` (JSON files for a local BPE);
``template``, ``max_new_tokens`` (1024, lmms-eval's LLaVA default), ``batch_size`` (1, lmms-eval's
recommendation), ``device``, ``dtype``, ``decode_routing`` (override), ``seed``, ``task_definitions``
(task-routed runs only).

Without lmms-eval installed the class still works against this interface (tests use it that way); lmms-eval's
registry accepts it only when it subclasses ``lmms``, which it does whenever lmms-eval is importable.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import torch

try:  # lmms-eval is an optional dependency: subclass its base class when it is there
    from lmms_eval.api.model import lmms as _Base

    HAVE_LMMS_EVAL = True
except ImportError:
    HAVE_LMMS_EVAL = False

    class _Base:  # the part of lmms_eval.api.model.lmms this class relies on
        def __init__(self) -> None:
            self._rank, self._world_size, self.task_dict = 0, 1, {}

        @property
        def rank(self) -> int:
            return self._rank

        @property
        def world_size(self) -> int:
            return self._world_size


class MixLoRA(_Base):
    """See the module docstring."""

    is_simple = True

    def __init__(self, run: Optional[str] = None, model_config: Optional[str] = None,
                 tokenizer_corpus: Optional[str] = None, template: str = "vicuna_v1", max_new_tokens: int = 1024,
                 batch_size: int | str = 1, device: Optional[str] = "cpu", dtype: Optional[str] = None,
                 decode_routing: Optional[str] = None, seed: int = 0, task_definitions: Optional[str] = None,
                 **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"mixlora: unknown model_args {sorted(unknown)}; valid: run, model_config, "
                             "tokenizer_corpus, template, max_new_tokens, batch_size, device, dtype, decode_routing, "
                             "seed, task_definitions")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RuntimeError("mixlora: the lmms-eval plugin runs in a single process; launch without accelerate/"
                               "torchrun (WORLD_SIZE > 1)")
        from mixlora.tasks.evaluate import Decoding, resolve_task_definitions, set_decode_routing

        Decoding(template=template)  # validates the template name now, not at the first request
        self.template, self.max_new_tokens, self.seed = template, int(max_new_tokens), int(seed)
        self.batch_size = 1 if batch_size in (None, "auto") else int(batch_size)
        self.device = device or "cpu"
        # The definitions are read (and a stray task_definitions refused) before the model is loaded.
        self.definitions = resolve_task_definitions(task_definitions, run)
        self.definitions_source = None
        if self.definitions is not None:
            self.definitions_source = task_definitions or _run_definitions_path(run)
        self.stack = self._load(run, model_config, tokenizer_corpus, dtype)
        set_decode_routing(self.stack.model, decode_routing)
        self.stack.model.eval()
        self._encoder = None
        if self.definitions is not None:
            from mixlora.data.definitions import DefinitionEncoder

            self._encoder = DefinitionEncoder(self.definitions, self.stack.tokenizer, self.template)

    def _load(self, run, model_config, tokenizer_corpus, dtype):
        from omegaconf import OmegaConf

        from mixlora.build import build_stack, build_tokenizer_from_config, load_run
        from mixlora.model.llm import resolve_dtype

        torch_dtype = resolve_dtype(dtype) if dtype else None
        if (run is None) == (model_config is None):
            raise ValueError("mixlora: give exactly one of run=RUN_DIR (a trained run) or model_config=YAML "
                             "(a base model, e.g. configs/model/tiny.yaml)")
        if run is not None:
            stack, _ = load_run(run, device=self.device, dtype=torch_dtype)
            return stack
        cfg = OmegaConf.load(model_config)
        corpus = [p for p in str(tokenizer_corpus or "").split(";") if p]
        if cfg.tokenizer.kind == "local_bpe" and not corpus:
            raise ValueError("mixlora: model_config uses a local BPE tokenizer; pass tokenizer_corpus=TRAIN.json "
                             "(several files separated by ';')")
        stack = build_stack(cfg, build_tokenizer_from_config(cfg.tokenizer, corpus))
        stack.model.to(device=self.device, **({"dtype": torch_dtype} if torch_dtype is not None else {}))
        return stack

    # ------------------------------------------------------------------ helpers
    def _doc(self, task: str, split: str, doc_id: Any):
        try:
            return self.task_dict[task][split][doc_id]
        except (KeyError, IndexError, TypeError) as err:
            raise KeyError(f"mixlora: document {doc_id!r} of task {task!r} split {split!r} is not in task_dict "
                           "(lmms-eval sets task_dict before calling the model)") from err

    def _image(self, doc_to_visual, task: str, split: str, doc_id: Any):
        visuals = doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual is not None else []
        visuals = [v for v in (visuals or []) if v is not None]
        if len(visuals) > 1:
            raise ValueError(f"mixlora: task {task!r} document {doc_id!r} has {len(visuals)} images; the LLaVA-v1 "
                             "stack takes one image per question")
        return visuals[0] if visuals else None

    def _check_definitions(self, tasks) -> None:
        """Under task routing, a TaskError (a ValueError) naming every lmms-eval task of ``tasks`` that has no
        definition, before anything runs. The key is the task name itself (``find_definition`` of an example whose
        group is the task: ``definition_keys`` is then ``[task]``)."""
        from mixlora.tasks.common import Example, TaskError, find_definition

        if self.definitions is None:
            return
        missing = sorted({str(t) for t in tasks
                          if find_definition(str(t), Example("", "", None, group=str(t)), self.definitions) is None})
        if missing:
            entry = ", ".join(f'"{t}": "<definition>"' for t in missing)
            raise TaskError(f"mixlora: the model routes on task definitions (adapter routing_source=task), but "
                            f"{self.definitions_source} has no definition for lmms-eval task(s) {missing}. Add "
                            f"{entry} (one or two sentences describing each task) to that JSON object, or pass "
                            "another file with --model_args run=...,task_definitions=PATH "
                            "(docs/benchmarks.md#lmms-eval)")

    def _with_definition(self, sample: dict, example) -> dict:
        """``sample`` with its task's definition row attached (task routing), through the evaluation loop's own
        helper; unchanged otherwise."""
        from mixlora.tasks.evaluate import attach_definition

        if self._encoder is None:
            return sample
        return attach_definition(sample, example, str(example.group), self.definitions, self._encoder)

    def _decoding(self, gen_kwargs: dict):
        from mixlora.tasks.evaluate import Decoding

        if int(gen_kwargs.get("num_beams", 1) or 1) != 1:
            raise ValueError("mixlora: num_beams > 1 is not supported (MixLoRA routes each instance; beam search "
                             "would expand the batch)")
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        top_p = gen_kwargs.get("top_p")
        decoding = Decoding(template=self.template, do_sample=temperature > 0,
                            temperature=temperature if temperature > 0 else 1.0,
                            top_p=float(top_p) if top_p is not None and temperature > 0 else None, seed=self.seed)
        max_new = int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens)
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        return decoding, max_new, [u for u in until if u]

    # ------------------------------------------------------------------ lmms-eval interface
    def generate_until(self, requests) -> list[str]:
        from mixlora.tasks.evaluate import generate_answers
        from mixlora.tasks.common import Example

        self._check_definitions(request.args[4] for request in requests)
        results: list[Optional[str]] = [None] * len(requests)
        # Same task and generation settings -> one batched pass, request order kept. Per task, because an
        # example's definition is looked up under the task name generate_answers is given.
        groups: dict[tuple[str, str], list[int]] = {}
        for i, request in enumerate(requests):
            key = (str(request.args[4]), json.dumps(request.args[1], sort_keys=True, default=str))
            groups.setdefault(key, []).append(i)
        for (task_name, _), indices in groups.items():
            decoding, max_new, until = self._decoding(dict(requests[indices[0]].args[1]))
            examples = []
            for i in indices:
                context, _, doc_to_visual, doc_id, task, split = requests[i].args
                examples.append(Example(uid=str(i), question=context,
                                        image=self._image(doc_to_visual, task, split, doc_id), group=task_name))
            for batch in generate_answers(self.stack, examples, decoding, max_new, self.batch_size, self.device,
                                          task_name=task_name, definitions=self.definitions):
                for ex, text in batch:
                    results[int(ex.uid)] = cut_at_stop(text, until)
        return results

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        from mixlora.constants import IGNORE_INDEX
        from mixlora.data.collator import GenerationCollator
        from mixlora.data.templates import (Segment, encode_segments, expand_image_tokens, get_template,
                                            image_token_id_of, render_prompt)
        from mixlora.tasks.evaluate import load_pixels
        from mixlora.tasks.common import Example

        self._check_definitions(request.args[4] for request in requests)
        model, tokenizer = self.stack.model, self.stack.tokenizer
        collate = GenerationCollator(tokenizer.pad_token_id)
        out = []
        for i, request in enumerate(requests):
            context, target, doc_to_visual, doc_id, task, split = request.args
            continuation = target if isinstance(target, str) else target(self._doc(task, split, doc_id))
            # The continuation is the answer segment, tokenised as a continuation of the prompt (as in training).
            segments = render_prompt(get_template(self.template), context, with_image=True)
            ids, labels = encode_segments(segments + [Segment("text", continuation, True)], tokenizer)
            ids, labels = expand_image_tokens(ids, labels, image_token_id_of(tokenizer), model.num_image_tokens)
            answer = [t for t, label in enumerate(labels) if label != IGNORE_INDEX]
            if not answer:
                raise ValueError(f"mixlora: request {i} (task {task!r}) has an empty continuation")
            prompt, cont = ids[: answer[0]], ids[answer[0] :]
            example = Example(uid=str(i), question=context, image=self._image(doc_to_visual, task, split, doc_id),
                              group=str(task))
            sample = {"input_ids": torch.tensor(ids), "pixel_values": load_pixels(
                self.stack.image_processor, example, str(task))}
            batch = collate([self._with_definition(sample, example)])
            # Row 0 is the request; under task routing a definition row follows and may be the longer one, so
            # row 0 can start with left padding.
            start = batch["input_ids"].shape[1] - len(ids)
            routing = batch["routing_mask"].clone()
            routing[0, start + len(prompt):] = False  # route on the prompt, as in training and generation
            source_rows = batch.get("source_rows")
            # sequence_mask: routing_tokens="all" averages each row's own tokens, never a batch-mate's padding
            # (as generate does); the forward itself is given no routing arguments, so this context is in force.
            with torch.no_grad(), model.routing(routing.to(self.device),
                                                None if source_rows is None else source_rows.to(self.device),
                                                sequence_mask=batch["attention_mask"].bool().to(self.device)):
                logits = model(input_ids=batch["input_ids"].to(self.device),
                               attention_mask=batch["attention_mask"].to(self.device),
                               pixel_values=batch["pixel_values"].to(self.device)).logits
            out.append(continuation_logprob(logits[0, start:].float().cpu(), len(prompt), cont))
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("mixlora: multi-round generation is not supported")


def _run_definitions_path(run: Optional[str]) -> str:
    """The ``data.task_definitions`` a run was trained with, for messages (its value as written)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    config = Path(str(run)) / "config.yaml"
    path = OmegaConf.select(OmegaConf.load(config), "data.task_definitions") if config.is_file() else None
    return f"{path} (the run's data.task_definitions)" if path else f"the data.task_definitions of {run}"


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """``text`` up to the earliest stop string (lmms-eval's ``until``), stripped."""
    cut = min((text.find(u) for u in until if u in text), default=len(text))
    return text[:cut].strip()


def continuation_logprob(logits: torch.Tensor, prompt_length: int, continuation: Sequence[int]) -> tuple[float, bool]:
    """(sum of log p(continuation token | prefix), whether each is the argmax) from ``logits [L, V]``.

    The logits at position t predict token t + 1, so continuation token k (at position prompt_length + k) is
    scored by the logits at prompt_length + k - 1.
    """
    n = len(continuation)
    scores = torch.log_softmax(logits[prompt_length - 1 : prompt_length - 1 + n], dim=-1)
    target = torch.tensor(list(continuation))
    picked = scores.gather(1, target[:, None]).squeeze(1)
    return float(picked.sum()), bool((scores.argmax(dim=-1) == target).all())
