"""Analyses of trained (or fresh) adapters: task interference (docs/method.md#task-interference) and routing
(docs/method.md#routing-analysis).

Submodules:
    ``mixlora.analysis.interference``  gradient-based task-interference matrices for LoRA A / B
    ``mixlora.analysis.routing``       factor usage, entropy, Jaccard t-SNE of MixLoRA selections

What both analyses (and their scripts) share lives in two modules and is re-exported here
(``from mixlora.analysis import X``):
    ``mixlora.analysis.samples``  per-task seeded samples of a Vision-Flan-style JSON, the synthetic suite's
                                  held-out sets (generated first when missing)
    ``mixlora.analysis.models``   the model under analysis (a run directory or a fresh stack from a model config),
                                  its adapted layers, and the scripts' model options
See docs/analysis.md.
"""

from __future__ import annotations

from mixlora.analysis.models import (MIXLORA_VARIANTS, MODEL_CONFIG_DIR, adapted_layers, adapter_config,
                                     add_model_arguments, fresh_stack, model_config_path, parse_list, randomize_lora_b,
                                     resolve_layers, stack_from_args)
from mixlora.analysis.samples import (default_image_folder, ensure_synthetic_suite, heldout_names, heldout_prompts,
                                      load_manifest, load_records, records_by_task, sample_per_task, short_task)

__all__ = ["MIXLORA_VARIANTS", "MODEL_CONFIG_DIR", "adapted_layers", "adapter_config",
           "add_model_arguments", "default_image_folder", "ensure_synthetic_suite", "fresh_stack", "heldout_names",
           "heldout_prompts", "load_manifest", "load_records", "model_config_path", "parse_list", "randomize_lora_b",
           "records_by_task", "resolve_layers", "sample_per_task", "short_task", "stack_from_args"]
