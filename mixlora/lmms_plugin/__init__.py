"""lmms-eval plugin: evaluate MixLoRA runs with lmms-eval's own task suite (no fork of lmms-eval).

    pip install lmms-eval                        # optional; not a dependency of mixlora
    LMMS_EVAL_PLUGINS=mixlora.lmms_plugin python -m lmms_eval --model mixlora \\
        --model_args run=runs/mixlora_e16_r4,template=vicuna_v1 --tasks mme --batch_size 1 --output_path out/

lmms-eval imports ``mixlora.lmms_plugin.models`` (``AVAILABLE_MODELS``) and adds the folder of
``mixlora.lmms_plugin.tasks`` to its task search path. The model class is
``mixlora.lmms_plugin.models.mixlora.MixLoRA``; see docs/evaluation.md.
"""
