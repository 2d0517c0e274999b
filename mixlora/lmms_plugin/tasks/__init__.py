"""lmms-eval task folder of the plugin (``LMMS_EVAL_PLUGINS`` adds it to ``--include_path``).

``mixlora_synth_*.yaml`` evaluate on the synthetic suite's held-out sets (``data/synthetic``, relative to the
working directory), scored with ``mixlora.scoring``; they run offline and check the plugin end to end. For the real
benchmarks use lmms-eval's own tasks (``mme``, ``pope``, ``textvqa``, ``cv_bench``).
"""
