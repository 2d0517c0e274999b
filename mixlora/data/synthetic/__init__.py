"""Procedural synthetic task suite: Vision-Flan-style training tasks and zero-shot held-out benchmarks.

The repository is demonstrated and tested on CPU without downloading anything, and this module is how: a tiny
LLaVA-style model is aligned on ``stage1.json``, instruction-tuned on the training tasks of
``train.json`` and evaluated zero-shot on held-out sets written in the public formats of the paper"s benchmarks.
The formats and the design (which training task teaches what, why each held-out set is zero-shot) are described in
``docs/synthetic.md``; the reference formats are in ``docs/benchmarks.md``.

Output layout of :func:`generate_suite` (``DIR`` = ``out_dir``)::

    DIR/train.json                      Vision-Flan records (list): id, image, task_name, conversations
    DIR/stage1.json                     LLaVA "plain" alignment records: human "<image>", gpt = short description
    DIR/images/<task_name>/<n>.png      training images (``image`` is relative to DIR/images/)
    DIR/images/stage1_align/<n>.png     alignment images
    DIR/eval/mme/<subtask>/<stem>.png + <stem>.txt      MME flat layout ("question<TAB>Yes|No", 2 lines)
    DIR/eval/mme/scene/images/<stem>.png + questions_answers_YN/<stem>.txt   (the release"s layout for scene)
    DIR/eval/cvbench/test.jsonl + img/{2D/count,2D/relation,3D/depth,3D/distance}/*.png
    DIR/eval/<set>/test.jsonl + images/*.png            MixLoRA eval JSONL: unique_id, prompt, target, image_path
    DIR/eval/pope/{random,popular,adversarial}.jsonl + images/*.png
    DIR/task_definitions.json           {key: definition text}: the 28 training task names, then "mme/<subtask>",
                                        "cvbench/<task>", "pope" and each simple set (task routing)
    DIR/manifest.json                   seed, sizes, counts, closest training tasks and zero-shot reasons

Every image is an RGB PNG of ``image_size`` x ``image_size`` pixels. Shapes, panels and glyphs are drawn without
anti-aliasing, so each object is one exact RGB value from :data:`COLORS` (tests check pixels against that). The
generator is deterministic: every component draws from its own ``random.Random(f"{seed}/{component}")`` stream and
never iterates over a ``set``, so the same arguments give byte-identical files in any process.

Modules (everything public is re-exported here, so ``from mixlora.data.synthetic import X`` works for all of them):

    vocab           colours, shapes, sizes, positions, backgrounds, words, glyphs
    rendering       drawable items, :class:`Scene`, :func:`render`
    scenes          scene sampling: contrast, placement, the shared scene builders
    phrases         inline options, answers, captions
    train_samplers  one sampler per training task
    train_tasks     :data:`TRAIN_TASKS` (names, phrasings, answer styles) and the ``train.json`` writer
    stage1          stage-one alignment captions (``stage1.json``)
    heldout_info    per held-out set: closest training tasks, why it is zero-shot, metric
    task_texts      task definitions (``task_definitions.json``)
    mme, cvbench, simple_sets, pope   the held-out sets, one public format each
    files           PNG / JSON / JSON Lines writers and the seeded stream of each component
    build           :func:`generate_suite`, the build entry point
    ensure          :func:`ensure_suite`: generate a missing suite atomically (train.py, eval.py, the analyses)
"""

from __future__ import annotations

from .build import GENERATOR, SUITE_FILES, generate_suite
from .cvbench import CVBENCH_TASKS, cvbench_prompt, write_cvbench
from .ensure import IncompleteSuiteError, ensure_suite, suite_problem
# The private file helpers are shared with mixlora.data.seen; the other private helpers live in their modules.
from .files import _rng, _save, _write_json, _write_jsonl  # noqa: F401
from .heldout_info import EVAL_INFO, EvalInfo
from .mme import MME_POSITION_PHRASES, MME_SUBTASKS, write_mme
from .phrases import caption, lettered, option_answer
from .pope import POPE_SPLITS, POPE_THEMES, pope_negatives, write_pope
from .rendering import PanelItem, Scene, ShapeItem, StrokeItem, TextItem, fit_scale, render, shape_polygon, text_mask
from .scenes import (DIGIT_STROKES, allowed_colors, handwritten_digit, multi_object, overlap_pair, pair_relation, place,
                     sign_scene, single_object, text_scene)
from .simple_sets import (CIFAR100_LABELS, NEUTRAL_TEMPLATES, SIMPLE_SETS, SNLI_LABELS, VSR_PHRASES, textvqa_answers,
                          write_simple_set)
from .stage1 import write_stage1
from .task_texts import TASK_DEFINITIONS, task_definitions, write_task_definitions
from .train_samplers import ANSWERABLE, SIDE_PHRASES, Sample, UNANSWERABLE
from .train_tasks import TRAIN_TASKS, TrainTask, vision_flan_human_turn, write_training
from .vocab import (BACKGROUNDS, BACKGROUND_PHRASES, CHARACTERS, COLORS, COLOR_NAMES, CVBENCH_SUFFIX, MME_SUFFIX,
                    NUMBER_WORDS, OPPOSITE, OPTION_LETTERS, PLAIN_BACKGROUNDS, PLURALS, POSITIONS, RELATIONS,
                    RELATION_PHRASES, SCENES, SHAPES, SIZES, WORDS)

__all__ = ["ANSWERABLE", "BACKGROUNDS", "BACKGROUND_PHRASES", "CHARACTERS", "CIFAR100_LABELS", "COLORS", "COLOR_NAMES",
           "CVBENCH_SUFFIX", "CVBENCH_TASKS", "DIGIT_STROKES", "EVAL_INFO", "EvalInfo", "GENERATOR",
           "IncompleteSuiteError", "MME_POSITION_PHRASES", "MME_SUBTASKS", "MME_SUFFIX", "NEUTRAL_TEMPLATES",
           "NUMBER_WORDS", "OPPOSITE", "OPTION_LETTERS", "PLAIN_BACKGROUNDS", "PLURALS", "POPE_SPLITS", "POPE_THEMES",
           "POSITIONS", "PanelItem", "RELATIONS", "RELATION_PHRASES", "SCENES", "SHAPES", "SIDE_PHRASES", "SIMPLE_SETS",
           "SIZES", "SNLI_LABELS", "SUITE_FILES", "Sample", "Scene", "ShapeItem", "StrokeItem", "TASK_DEFINITIONS",
           "TRAIN_TASKS", "TextItem", "TrainTask", "UNANSWERABLE", "VSR_PHRASES", "WORDS", "allowed_colors", "caption",
           "cvbench_prompt", "ensure_suite", "fit_scale", "generate_suite", "handwritten_digit", "lettered",
           "multi_object", "option_answer", "overlap_pair", "pair_relation", "place", "pope_negatives", "render",
           "shape_polygon", "sign_scene", "single_object", "suite_problem", "task_definitions", "text_mask",
           "text_scene", "textvqa_answers", "vision_flan_human_turn", "write_cvbench", "write_mme", "write_pope",
           "write_simple_set", "write_stage1", "write_task_definitions", "write_training"]
