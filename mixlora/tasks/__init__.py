"""Evaluation tasks: one small module per benchmark (local files -> examples -> official scores).

``common``          the Example type, the Task interface, prompt building, file readers.
``mme``             MME (prepared JSONL or the raw release layout), official eval_tool files and scores.
``cvbench``         CV-Bench (prepared, release or synthetic JSONL), official combined score.
``pope``            POPE, three splits, LLaVA's parsing, F1 and friends.
``textvqa``         TextVQA, VQA accuracy.
``classification``  VSR, SNLI-VE, CIFAR-10, CIFAR-100, MNIST: one ``ClassificationTask``, accuracy.
``predictions``     the resumable predictions file; ``report``: eval/metrics.json and results.md.

Tasks are built by Hydra from ``configs/task/<name>.yaml`` (``_target_`` = a class or ``build`` function here)
and run by ``mixlora.tasks.evaluate``. Scoring is delegated to ``mixlora.scoring`` (docs/eval_scoring.md).

Each former per-set module path (``mixlora.tasks.vsr``, ``.snli_ve``, ``.cifar10``, ``.cifar100``, ``.mnist``)
is a small alias module registered here, holding the set's ``build`` (``classification.set_builder``), so
``_target_: mixlora.tasks.cifar10.build`` and ``from mixlora.tasks import cifar10`` keep working.
"""

import sys as _sys
import types as _types

from .classification import CLASSIFICATION_SETS as _SETS
from .classification import set_builder as _set_builder


def _alias_module(set_name: str) -> _types.ModuleType:
    module = _types.ModuleType(f"{__name__}.{set_name}",
                               f"{_SETS[set_name]}: alias of ``mixlora.tasks.classification`` for this set.")
    module.build = _set_builder(set_name)
    return module


for _set_name in _SETS:
    # sys.modules makes ``import mixlora.tasks.<set>`` work; the attribute makes ``from mixlora.tasks import <set>``
    # and Hydra's ``_target_`` lookup (getattr first) find the same module.
    globals()[_set_name] = _sys.modules.setdefault(f"{__name__}.{_set_name}", _alias_module(_set_name))
del _set_name
