"""Task definitions (task-specific routing): one text per training task and per held-out set, and the writer of
``task_definitions.json``."""

from __future__ import annotations

from pathlib import Path

from .files import _write_json
from .heldout_info import EVAL_INFO
from .train_tasks import TRAIN_TASKS


# Task definitions (task-specific routing, docs/method.md#routing-sources-the-routing-ablation;
# ``mixlora.data.definitions``): one or two sentences per training task and per held-out set, in the style of
# Vision-Flan's definitions table (what the image shows, what to do, the answer format). Keys: training task names,
# then the EVAL_INFO keys (an evaluation looks up "<task>/<group>", e.g. "mme/existence", then "<task>", e.g. "pope").
TASK_DEFINITIONS: dict[str, str] = {
    "SynthShapes+color_classification": "You are given an image with a single shape. Choose the color of the shape "
    "from the given options and answer with the option letter and the color, for example '(b) red'.",
    "SynthShapes+color_name": "You are given an image with a single shape. Name the color of the shape with one "
    "word, such as 'red'.",
    "SynthShapes+color_verification": "You are given an image with a single shape and asked about a color. Decide "
    "whether the shape has that color and answer 'Yes' or 'No'.",
    "SynthShapes+shape_classification": "You are given an image with a single object. Choose its shape from the "
    "given options and answer with the option letter and the shape, for example '(c) triangle'.",
    "SynthShapes+shape_verification": "You are given an image with a single object and asked about a shape. Decide "
    "whether the object has that shape and answer 'yes' or 'no' in lower case.",
    "SynthShapes+size_classification": "You are given an image with a single shape. Say whether the shape is small, "
    "medium or large compared with the image, answering with one of these words.",
    "SynthShapes+object_description": "You are given an image with a single shape. Describe it in a short phrase "
    "giving its size, color and shape, for example 'a small red triangle'.",
    "SynthCount+count_digits": "You are given an image with several shapes. Count all the shapes and answer with "
    "the number in digits, for example '4'.",
    "SynthCount+count_words": "You are given an image with several shapes. Count all the shapes and write the "
    "number as an English word, for example 'four'.",
    "SynthCount+count_options": "You are given an image with several shapes. Count them and choose the correct "
    "number from the given options, answering with the option letter and the number, for example '(c) 4'.",
    "SynthCount+count_by_shape": "You are given an image with shapes of different kinds and a kind to look for. "
    "Count only the shapes of that kind and answer in digits, with 0 when there are none.",
    "SynthSpatial+position_classification": "You are given an image with a single shape. Choose where it lies "
    "(left, right, top, bottom or center) from the given options, answering with the option letter and the "
    "position.",
    "SynthSpatial+position_name": "You are given an image with a single shape. Name the part of the image that "
    "holds it with one word: left, right, top, bottom or center.",
    "SynthSpatial+relation_sentence": "You are given an image with two shapes. Write one sentence saying where the "
    "first named shape is relative to the second, for example 'The red circle is to the left of the blue star.'",
    "SynthSpatial+relation_which": "You are given an image with two shapes and a direction. Tell which of the two "
    "named shapes lies in that direction, answering with a short phrase such as 'the red circle'.",
    "SynthSpatial+distance_judgement": "You are given an image with two shapes. Judge whether they are close "
    "together or far apart and answer 'close' or 'far'.",
    "SynthDepth+occlusion_front": "You are given an image in which one shape partly covers another. Choose the "
    "shape in front, nearer to the viewer, from the given options and answer with the option letter and the shape.",
    "SynthCompare+size_comparison": "You are given an image with two shapes. Tell which of the two named shapes is "
    "bigger, answering with a short phrase such as 'the blue square'.",
    "SynthGlyphs+character_reading": "You are given an image showing one letter or digit. Read it and answer with "
    "that single character.",
    "SynthGlyphs+word_transcription": "You are given an image with a short word written in it. Transcribe the word "
    "exactly and answer with the word alone.",
    "SynthGlyphs+text_color": "You are given an image with some writing. Choose the color of the writing from the "
    "given options and answer with the option letter and the color.",
    "SynthGlyphs+arithmetic": "You are given an image with a written sum or difference of small numbers. Compute the "
    "result and answer with it in digits.",
    "SynthScenes+background_classification": "You are given an image of a scene, possibly with some shapes in it. "
    "Choose the kind of background from the given options and answer with the option letter and the scene.",
    "SynthScenes+scene_name": "You are given an image of a scene. Name the kind of background with a single word, "
    "such as 'snow' or 'grass'.",
    "SynthObjects+object_listing": "You are given an image with several shapes. List the shapes from left to right, "
    "separated by commas, for example 'circle, square, star'.",
    "SynthCaptions+image_captioning": "You are given an image with shapes on a background. Write one sentence that "
    "describes the shapes and the background, for example 'A large red circle on grass.'",
    "SynthCaptions+caption_matching": "You are given an image and a caption. Decide whether the caption correctly "
    "describes the image and answer 'yes' or 'no' in lower case.",
    "SynthCaptions+question_answerability": "You are given an image and a question about it. Decide whether the "
    "question can be answered by looking at the image and answer 'Yes' or 'No'.",
    "mme/existence": "You are given an image with several shapes and asked whether a shape of a given color and "
    "kind is in it. Answer yes or no.",
    "mme/count": "You are given an image with shapes and a question stating how many shapes of one kind it holds. "
    "Decide whether that number is right and answer yes or no.",
    "mme/position": "You are given an image with two shapes and a question stating where one lies relative to the "
    "other. Decide whether the statement is right and answer yes or no.",
    "mme/color": "You are given an image with several shapes and a question about the color of one named shape. "
    "Answer yes or no.",
    "mme/OCR": "You are given an image with a word written on a plate and a question quoting a word. Decide whether "
    "the quoted word is the one written and answer yes or no.",
    "mme/numerical_calculation": "You are given an image with a written arithmetic question and a proposed result. "
    "Decide whether the result is correct and answer yes or no.",
    "mme/scene": "You are given an image of a scene and a question naming a kind of scene. Decide whether the image "
    "shows that kind of scene and answer yes or no.",
    "cvbench/Count": "You are given an image with several small shapes and a kind of shape. Count the shapes of that "
    "kind and answer with the letter of the matching choice.",
    "cvbench/Relation": "You are given an image with two named shapes. Choose where the first lies with respect to "
    "the second and answer with the letter of the matching choice.",
    "cvbench/Depth": "You are given a picture of shapes in a room. Choose which named shape is closer to the camera "
    "and answer with the letter of the matching choice.",
    "cvbench/Distance": "You are given a picture of three shapes in a room. Choose which of two named shapes is "
    "closer to the reference shape and answer with the letter of the matching choice.",
    "cifar10": "You are given an image of a single object. Choose the kind of object from the given options.",
    "cifar100": "You are given an image of a single object. Name the object by its color and shape, for example "
    "'red circle'.",
    "mnist": "You are given an image of a handwritten digit. Answer with the digit.",
    "pope": "You are given an image with several shapes and asked whether a shape of a given kind is in it. Answer "
    "yes or no.",
    "vsr": "You are given an image with two shapes and a statement about where one lies relative to the other. "
    "Decide whether the statement is true or false.",
    "snli_ve": "You are given an image as a premise and a sentence as a hypothesis. Decide whether the image entails "
    "the hypothesis, contradicts it, or neither: entailment, contradiction or neutral.",
    "textvqa": "You are given an image with words written on signs and a question about them. Answer with the word "
    "that the question asks for.",
}


def task_definitions() -> dict[str, str]:
    """{key: definition} for every training task (``task_name``) and every held-out set (the EVAL_INFO keys), in
    that order; independent of the seed and the sizes."""
    keys = [t.name for t in TRAIN_TASKS] + list(EVAL_INFO)
    missing = [k for k in keys if k not in TASK_DEFINITIONS]
    extra = [k for k in TASK_DEFINITIONS if k not in keys]
    if missing or extra:  # a task added without a definition (or a stale one) must not ship silently
        raise RuntimeError(f"TASK_DEFINITIONS is out of date: missing {missing}, unknown {extra}")
    return {k: TASK_DEFINITIONS[k] for k in keys}


def write_task_definitions(out: str | Path) -> dict:
    """Write ``DIR/task_definitions.json`` (see :func:`task_definitions`); returns its manifest entry."""
    from mixlora.data.definitions import DEFINITIONS_FILE

    table = task_definitions()
    _write_json(Path(out) / DEFINITIONS_FILE, table)
    return {"path": DEFINITIONS_FILE, "training_tasks": len(TRAIN_TASKS), "eval_keys": len(table) - len(TRAIN_TASKS)}
