#!/usr/bin/env python
"""Zero-shot evaluation of a run (or of the base model) on MME, CV-Bench and the paper's seven sets:
``python eval.py run=RUN_DIR [key=value ...]``, the same as ``python -m mixlora.tasks.cli`` (the entry point lives
in the package; its docstring lists the commands and outputs). Config: configs/eval.yaml; docs/evaluation.md.
"""

from mixlora.tasks.cli import (BASE_OUTPUT, build_tasks, check_task_names, ensure_synthetic_suite,  # noqa: F401
                               load_stack, main, needs_synthetic, output_dir, run_eval)

if __name__ == "__main__":
    main()
