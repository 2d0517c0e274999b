"""Evaluation tasks: one small module per benchmark (local files -> examples -> official scores).

``common``          the Example type, the Task interface, prompt building, file readers.
``mme``             MME (prepared JSONL or the raw release layout), official eval_tool files and scores.
``cvbench``         CV-Bench (prepared, release or synthetic JSONL), official combined score.
``pope``            POPE, three splits, LLaVA's parsing, F1 and friends.
``textvqa``         TextVQA, VQA accuracy.
``vsr``, ``snli_ve``, ``cifar10``, ``cifar100``, ``mnist``   classification accuracy (``classification``).
``predictions``     the resumable predictions file; ``report``: eval/metrics.json and results.md.

Tasks are built by Hydra from ``configs/task/<name>.yaml`` (``_target_`` = a class or ``build`` function here)
and run by ``mixlora.evaluate``. Scoring is delegated to ``mixlora.eval`` (docs/eval_scoring.md).
"""
