"""Which MixLoRA factors each testbed task selects: the routing-usage measure of the report.

For ``per_task`` seen-split prompts of every task, one prefill forward of the trained model (left-padded like
generation, each row averaging only its own tokens) and the A selection of every MixLoRA layer. Usage of factor
e by a task = the share of the task's instances whose selection contains e, averaged over layers (values in
[0, 1]; a row sums to r). Tasks that share factors route alike; a family whose tasks use disjoint factors has
been separated by the router.
"""

from __future__ import annotations

from pathlib import Path

import torch


@torch.no_grad()
def routing_usage(run_dir: Path, data: Path, per_task: int = 50, batch_size: int = 100) -> dict:
    from mixlora.build import load_run
    from mixlora.data.collator import GenerationCollator
    from mixlora.tasks.evaluate import prompt_sample
    from mixlora.routing_state import last_selections, mixlora_layers

    from .recipe import TEMPLATE, test_tasks

    stack, _ = load_run(run_dir)
    model, tokenizer = stack.model, stack.tokenizer
    examples = test_tasks(data)["seen"].examples(per_task, "task")
    instruction = model.routes_on_instruction()
    collate = GenerationCollator(tokenizer.pad_token_id)
    layers = mixlora_layers(model.llm)
    if not layers:
        raise ValueError(f"{run_dir} has no MixLoRA layers; routing usage needs a MixLoRA run")
    factors = layers[0][1].num_factors
    counts: dict[str, torch.Tensor] = {}
    totals: dict[str, int] = {}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        samples = [prompt_sample(ex, tokenizer, stack.image_processor, TEMPLATE, model.num_image_tokens,
                                 instruction, "seen") for ex in chunk]
        batch = collate(samples)
        with model.routing(batch["routing_mask"], sequence_mask=batch["attention_mask"].bool(),
                           instruction_mask=batch.get("instruction_mask")):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  pixel_values=batch["pixel_values"])
        selections = last_selections(model.llm)
        for idx_a, _ in selections.values():
            chosen = torch.zeros(idx_a.shape[0], factors).scatter_(1, idx_a.cpu(), 1.0)  # [B, E] 0/1
            for b, ex in enumerate(chunk):
                counts[ex.group] = counts.get(ex.group, torch.zeros(factors)) + chosen[b] / len(selections)
        for ex in chunk:
            totals[ex.group] = totals.get(ex.group, 0) + 1
    tasks = sorted(counts)
    return {"run": str(Path(run_dir).name), "per_task": per_task, "tasks": tasks,
            "usage": {t: [round(float(v) / totals[t], 4) for v in counts[t]] for t in tasks}}
