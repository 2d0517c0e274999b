#!/usr/bin/env python
"""Zero-shot evaluation of a run (or of the base model) on MME, CV-Bench and the paper's seven sets.

    python eval.py run=RUN_DIR tasks=[mme,cvbench,pope]         # a trained run: base + adapter + projector
    python eval.py run=null model=tiny                          # the freshly built base model, no adapter
    python eval.py run=RUN_DIR decoding=released                # template llava_v1, T=0.2 sampling, 1024 tokens
    python eval.py run=RUN_DIR task.mme.path=data/mme tasks=[mme] limit=4 batch_size=1

Writes OUT/eval/<task>/{predictions.jsonl, settings.json, metrics.json}, OUT/eval/mme/eval_tool/<subtask>.txt,
OUT/eval/metrics.json and OUT/eval/results.md (printed at the end), OUT = output_dir, else the run directory,
else runs/base. An interrupted evaluation resumes: run the same command again. Config: configs/eval.yaml;
formats and options: docs/evaluation.md.

The same as ``python -m mixlora.tasks.cli`` (the entry point lives in the package).
"""

from mixlora.tasks.cli import (BASE_OUTPUT, build_tasks, check_task_names, ensure_synthetic_suite,  # noqa: F401
                               load_stack, main, needs_synthetic, output_dir, run_eval)

if __name__ == "__main__":
    main()
