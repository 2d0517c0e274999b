"""The 28 Vision-Flan-style training tasks (names, instruction phrasings, answer styles) and the writer of
``train.json`` with its images."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .files import _rng, _save, _write_json
from .phrases import lettered
from .rendering import render
from .train_samplers import (Sample, _t_arithmetic, _t_background_classification, _t_caption_matching,
                             _t_character_reading, _t_color_classification, _t_color_name, _t_color_verification,
                             _t_count_by_shape, _t_count_digits, _t_count_options, _t_count_words,
                             _t_distance_judgement, _t_image_captioning, _t_object_description, _t_object_listing,
                             _t_occlusion_front, _t_position_classification, _t_position_name,
                             _t_question_answerability, _t_relation_sentence, _t_relation_which, _t_scene_name,
                             _t_shape_classification, _t_shape_verification, _t_size_classification, _t_size_comparison,
                             _t_text_color, _t_word_transcription)


@dataclass(frozen=True)
class TrainTask:
    """A Vision-Flan-style task: name '<Source>+<task>', >=3 instruction phrasings with {fields}, an answer style,
    the concepts it teaches, and ``sample(rng, image_size) -> Sample``."""

    name: str
    phrasings: tuple[str, ...]
    answer_style: str
    teaches: str
    sample: Callable[[random.Random, int], Sample]


TRAIN_TASKS: tuple[TrainTask, ...] = (
    TrainTask("SynthShapes+color_classification",
              ("What color is the shape in the image?", "Identify the color of the object shown.",
               "Which color best describes the figure in this picture?"),
              "inline option '(b) red'", "colour names", _t_color_classification),
    TrainTask("SynthShapes+color_name",
              ("Name the color of the object.", "Tell me the color of the figure in one word.",
               "The shape in this picture has which color?"),
              "bare label 'red'", "colour names", _t_color_name),
    TrainTask("SynthShapes+color_verification",
              ("Is the object in the picture {color}?", "Is this shape colored {color}?",
               "Look at the figure. Is its color {color}?"),
              "'Yes' / 'No'", "colour, yes/no answering", _t_color_verification),
    TrainTask("SynthShapes+shape_classification",
              ("What shape is shown in the image?", "Select the shape of the object.",
               "Which of the following shapes appears in the picture?"),
              "inline option '(c) triangle'", "shape names", _t_shape_classification),
    TrainTask("SynthShapes+shape_verification",
              ("Is the object a {shape}?", "Does the picture show a {shape}?", "Is this figure shaped like a {shape}?"),
              "'yes' / 'no' (lower case)", "shape, yes/no answering", _t_shape_verification),
    TrainTask("SynthShapes+size_classification",
              ("How big is the shape? Answer small, medium or large.", "What is the size of the object?",
               "Is the figure small, medium or large?"),
              "bare label 'small' / 'medium' / 'large'", "object size", _t_size_classification),
    TrainTask("SynthShapes+object_description",
              ("Describe the object in a few words.", "Give a short description of the shape.",
               "What do you see in this picture? Answer briefly."),
              "short phrase 'a small red triangle'", "size + colour + shape together", _t_object_description),
    TrainTask("SynthCount+count_digits",
              ("How many shapes are in the image?", "Count the objects in the picture.",
               "What is the number of figures shown?"),
              "digits '4'", "counting", _t_count_digits),
    TrainTask("SynthCount+count_words",
              ("How many objects can you see? Answer in words.", "Count the shapes and write the number as a word.",
               "Tell me, in words, how many figures there are."),
              "number word 'four'", "counting, number words", _t_count_words),
    TrainTask("SynthCount+count_options",
              ("How many shapes does the image contain?", "Choose the number of objects in the picture.",
               "Pick the correct count of figures."),
              "inline option '(c) 4'", "counting with options", _t_count_options),
    TrainTask("SynthCount+count_by_shape",
              ("Count the {plural} in the picture.", "How many {plural} can you find?",
               "What is the number of {plural} shown?"),
              "digits '2' (0 when absent)", "counting one kind among distractors", _t_count_by_shape),
    TrainTask("SynthSpatial+position_classification",
              ("Where is the shape located in the image?", "In which part of the picture is the object?",
               "Choose the position of the figure."),
              "inline option '(b) right'", "absolute position", _t_position_classification),
    TrainTask("SynthSpatial+position_name",
              ("Which side of the image is the shape on?", "Name the region of the picture that holds the object.",
               "Give the location of the figure in one word."),
              "bare label 'top'", "absolute position", _t_position_name),
    TrainTask("SynthSpatial+relation_sentence",
              ("Describe where the {a} is relative to the {b}.", "Where is the {a} compared with the {b}?",
               "Explain the position of the {a} with respect to the {b}."),
              "sentence 'The red circle is to the left of the blue star.'", "relative position", _t_relation_sentence),
    TrainTask("SynthSpatial+relation_which",
              ("Which shape is {side}, the {x} or the {y}?", "Between the {x} and the {y}, which one is {side}?",
               "Of the {x} and the {y}, tell me which is {side}."),
              "phrase 'the red circle'", "relative position, naming objects", _t_relation_which),
    TrainTask("SynthSpatial+distance_judgement",
              ("Are the two shapes close together or far apart?", "Is the distance between the objects small or large? "
               "Answer close or far.", "Do the figures sit near each other or far from each other?"),
              "'close' / 'far'", "distance between objects", _t_distance_judgement),
    TrainTask("SynthDepth+occlusion_front",
              ("Which shape is in front?", "One object covers part of the other. Which one is on top?",
               "Which figure is nearer to the viewer?"),
              "inline option '(a) the red circle'", "occlusion = nearer", _t_occlusion_front),
    TrainTask("SynthCompare+size_comparison",
              ("Which shape is bigger, the {x} or the {y}?", "Which one is larger: the {x} or the {y}?",
               "Compare the {x} and the {y}. Which takes up more space?"),
              "phrase 'the blue square'", "size comparison", _t_size_comparison),
    TrainTask("SynthGlyphs+character_reading",
              ("What character is shown in the image?", "Read the symbol in the picture.",
               "Which letter or digit is written here?"),
              "bare glyph 'K'", "reading letters and digits", _t_character_reading),
    TrainTask("SynthGlyphs+word_transcription",
              ("Transcribe the text in the image.", "What is written in the picture?", "Read the word shown."),
              "bare word 'cat'", "reading words", _t_word_transcription),
    TrainTask("SynthGlyphs+text_color",
              ("What color is the text?", "In which color is the writing printed?",
               "Choose the color of the letters."),
              "inline option '(d) green'", "colour of glyphs", _t_text_color),
    TrainTask("SynthGlyphs+arithmetic",
              ("What is the result of the expression in the image?", "Compute the value of what is written.",
               "Solve the arithmetic shown in the picture."),
              "digits '7'", "reading + computing sums/differences", _t_arithmetic),
    TrainTask("SynthScenes+background_classification",
              ("What is the background of the image?", "Select the kind of scene shown.",
               "Which setting does this picture show?"),
              "inline option '(c) snow'", "scene types", _t_background_classification),
    TrainTask("SynthScenes+scene_name",
              ("Name the scene in one word.", "What kind of place is this?", "Describe the setting with a single word."),
              "bare label 'snow'", "scene types", _t_scene_name),
    TrainTask("SynthObjects+object_listing",
              ("List the shapes in the image from left to right.",
               "Which shapes appear in the picture? Name them from left to right.",
               "Name every shape you see, going left to right."),
              "list 'circle, square, star'", "which objects are present", _t_object_listing),
    TrainTask("SynthCaptions+image_captioning",
              ("Write a caption for this image.", "Describe the image in one sentence.",
               "Give a one-sentence description of the picture."),
              "sentence 'A large red circle on grass.'", "full scene description", _t_image_captioning),
    TrainTask("SynthCaptions+caption_matching",
              ("Does this caption describe the image? Caption: {caption}", "Caption: {caption} Is this caption correct?",
               "Check the caption against the picture: {caption} Does it match?"),
              "'yes' / 'no' (lower case)", "verifying statements about the image", _t_caption_matching),
    TrainTask("SynthCaptions+question_answerability",
              ("Can this question be answered by looking at the image? {question}",
               "Question: {question} Is the answer visible in the picture?",
               "Decide whether the image answers the question: {question}"),
              "'Yes' / 'No'", "what an image can and cannot tell (unobservable facts)", _t_question_answerability),
)


def vision_flan_human_turn(instruction: str, options: list[str] | None) -> str:
    """Vision-Flan human turn: instruction, optional '\\nOptions: (a) ... (b) ...', then '\\n<image>' at the end."""
    text = instruction + (f"\nOptions: {lettered(options)}" if options else "")
    return text + "\n<image>"


def write_training(out: Path, seed: int, size: int, per_task: int, bar) -> tuple[list[dict], dict]:
    """Write ``train.json`` and its images; returns (records, per-task manifest entries)."""
    records, info = [], {}
    for task in TRAIN_TASKS:
        rng = _rng(seed, task.name)
        order: list[int] = []
        for n in range(per_task):
            if not order:  # cycle through the phrasings in shuffled rounds, so every phrasing is used
                order = list(range(len(task.phrasings)))
                rng.shuffle(order)
            sample = task.sample(rng, size)
            instruction = task.phrasings[order.pop()].format(**sample.fields)
            image = f"{task.name}/{n:05d}.png"
            _save(render(sample.scene), out / "images" / image)
            records.append({
                # Like Vision-Flan, ids repeat within a task: key records by (task_name, image).
                "id": f"synth_{task.name}+{rng.randrange(max(1, per_task // 3))}",
                "image": image,
                "task_name": task.name,
                "conversations": [
                    {"from": "human", "value": vision_flan_human_turn(instruction, sample.options)},
                    {"from": "gpt", "value": sample.answer},
                ],
            })
            bar.update(1)
        info[task.name] = {"records": per_task, "images": per_task, "phrasings": len(task.phrasings),
                           "answer_style": task.answer_style, "teaches": task.teaches}
    _write_json(out / "train.json", records)
    return records, info
