"""Model classes for lmms-eval: {model name: class name in ``mixlora.lmms_plugin.models.<model name>``}.

lmms-eval resolves ``--model mixlora`` to ``mixlora.lmms_plugin.models.mixlora.MixLoRA`` from this dict.
"""

AVAILABLE_MODELS = {"mixlora": "MixLoRA"}
