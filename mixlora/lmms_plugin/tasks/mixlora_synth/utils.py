"""Functions named by the plugin's task YAMLs (lmms-eval calls them through ``!function utils.<name>``).

Documents are lines of the synthetic suite's released-format JSONL (``unique_id``, ``prompt``, ``target``,
``image_path`` relative to the JSONL's folder); ``SYNTHETIC_EVAL`` is that folder's parent, relative to the
working directory unless ``MIXLORA_SYNTHETIC_ROOT`` names the suite. Scores come from ``mixlora.scoring``.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from mixlora.scoring.pope import parse_pope, pope_metrics


def _eval_root() -> Path:
    return Path(os.environ.get("MIXLORA_SYNTHETIC_ROOT", "data/synthetic")) / "eval"


def pope_doc_to_visual(doc: dict) -> list:
    return [Image.open(_eval_root() / "pope" / doc["image_path"]).convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['prompt']}{kwargs.get('post_prompt', '')}"


def pope_process_results(doc: dict, results: list) -> dict:
    item = {"prediction": parse_pope(results[0]), "target": doc["target"].strip().lower()}
    return {"pope_f1": item, "pope_accuracy": item, "pope_yes_ratio": item}


def _metrics(items: list) -> dict:
    return pope_metrics([i["prediction"] for i in items], [i["target"] for i in items])


def pope_f1(items: list) -> float:
    return _metrics(items)["f1"]


def pope_accuracy(items: list) -> float:
    return _metrics(items)["accuracy"]


def pope_yes_ratio(items: list) -> float:
    return _metrics(items)["yes_ratio"]
