"""Instruction and caption wording.

Per task, :data:`TRAIN_TEMPLATES` (4 phrasings, used in ``train.json`` and the ``seen`` test split) and
:data:`UNSEEN_TEMPLATES` (2 phrasings, used only in the ``unseen`` test split). ``{value}`` is the named value of
a verify question; no other placeholder is used. Within a family the training phrasings of different tasks are
told apart by their key words (name: plain question; next: "after"/"follows"/"next" plus the cycle; flip:
"opposite"/"mirror"; verify: a yes/no question about a named value). Unseen phrasings reword the question; they
keep the meaning, not the wording. The vocabulary is kept small because the tiny model's BPE is trained on it.
"""

from __future__ import annotations

from mixlora.data.testbed.vocab import CYCLES, cycle_text

_ONE = "Answer with one word."
_TWO = "Answer with two words."
_YES_NO = "Answer yes or no."

_C, _S, _P = cycle_text("colour"), cycle_text("size"), cycle_text("position")
_C0, _S0, _P0 = CYCLES["colour"][0], CYCLES["size"][0], CYCLES["position"][0]

TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour_name": (
        f"What colour is the object? {_ONE}",
        f"Name the colour of the shape. {_ONE}",
        f"Which colour is the object in the image? {_ONE}",
        f"Tell me the colour of the object. {_ONE}",
    ),
    "colour_next": (
        f"Which colour comes after the object's colour in the sequence {_C} (wrapping around)? {_ONE}",
        f"In the cycle {_C}, then back to {_C0}, which colour follows the colour of the object? {_ONE}",
        f"Give the next colour after the colour of the shape in the order {_C}, then {_C0} again. {_ONE}",
        f"What is the next colour after the object's colour in the loop {_C}? {_ONE}",
    ),
    "colour_flip": (
        f"Name the opposite of the object's colour. {_ONE}",
        f"What is the opposite colour of the object? {_ONE}",
        f"Give the colour that is opposite to the colour of the shape. {_ONE}",
        f"Which colour is the opposite of the object's colour? {_ONE}",
    ),
    "colour_verify": (
        f"Is the object {{value}}? {_YES_NO}",
        f"Is the colour of the shape {{value}}? {_YES_NO}",
        f"Does the object have the colour {{value}}? {_YES_NO}",
        f"Is the object in the image coloured {{value}}? {_YES_NO}",
    ),
    "size_name": (
        f"What size is the object? {_ONE}",
        f"Name the size of the shape. {_ONE}",
        f"How big is the object in the image? {_ONE}",
        f"Tell me the size of the object. {_ONE}",
    ),
    "size_next": (
        f"Which size comes after the object's size in the sequence {_S} (wrapping around)? {_ONE}",
        f"In the cycle {_S}, then back to {_S0}, which size follows the size of the object? {_ONE}",
        f"Give the next size after the size of the shape in the order {_S}, then {_S0} again. {_ONE}",
        f"What is the next size after the object's size in the loop {_S}? {_ONE}",
    ),
    "size_flip": (
        f"Name the opposite of the object's size. {_ONE}",
        f"What is the opposite size of the object? {_ONE}",
        f"Give the size that is opposite to the size of the shape. {_ONE}",
        f"Which size is the opposite of the object's size? {_ONE}",
    ),
    "size_verify": (
        f"Is the object {{value}} in size? {_YES_NO}",
        f"Is the size of the shape {{value}}? {_YES_NO}",
        f"Does the object have the size {{value}}? {_YES_NO}",
        f"Is the object in the image of {{value}} size? {_YES_NO}",
    ),
    "position_name": (
        f"Where is the object in the image? {_TWO}",
        f"Name the position of the shape. {_TWO}",
        f"In which quarter of the image is the object? {_TWO}",
        f"Tell me the position of the object. {_TWO}",
    ),
    "position_next": (
        f"Which position comes after the object's position in the clockwise sequence {_P} (wrapping around)? {_TWO}",
        f"In the clockwise cycle {_P}, then back to {_P0}, which position follows the position of the object? {_TWO}",
        f"Give the next position after the position of the shape in the clockwise order {_P}, then {_P0} again. {_TWO}",
        f"What is the next position after the object's position in the clockwise loop {_P}? {_TWO}",
    ),
    "position_flip": (
        f"Where would the object be if the image were mirrored left to right? {_TWO}",
        f"Name the mirror position of the shape, with left and right swapped. {_TWO}",
        f"Give the position of the object after a left to right mirror of the image. {_TWO}",
        f"Which position is the mirror of the object's position, swapping left and right? {_TWO}",
    ),
    "position_verify": (
        f"Is the object in the {{value}}? {_YES_NO}",
        f"Is the position of the shape the {{value}}? {_YES_NO}",
        f"Does the object lie in the {{value}} quarter? {_YES_NO}",
        f"Is the object in the image placed in the {{value}}? {_YES_NO}",
    ),
}

UNSEEN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour_name": (
        "Say which colour the thing shown has, using a single word.",
        "The picture shows one shape. What is its colour? Reply with one word only.",
    ),
    "colour_next": (
        f"Going round {_C} and starting over at the end, what colour is one step past the shape's colour? "
        "Reply with one word only.",
        f"Move one place forward from the colour of the thing shown, using the repeating list {_C}. "
        "Which colour do you land on? Use a single word.",
    ),
    "colour_flip": (
        "Swap the colour of the thing shown for its counterpart. Which colour do you get? Use a single word.",
        "The picture shows one shape. What colour is the reverse of its colour? Reply with one word only.",
    ),
    "colour_verify": (
        "Would you call the thing shown {value}? Reply with yes or no only.",
        "True or false: the shape in the picture is {value}. Say yes or no.",
    ),
    "size_name": (
        "Say how large the thing shown is, using a single word.",
        "The picture shows one shape. Which size class does it belong to? Reply with one word only.",
    ),
    "size_next": (
        f"Going round {_S} and starting over at the end, what size is one step past the shape's size? "
        "Reply with one word only.",
        f"Move one place forward from the size of the thing shown, using the repeating list {_S}. "
        "Which size do you land on? Use a single word.",
    ),
    "size_flip": (
        "Swap the size of the thing shown for its counterpart. Which size do you get? Use a single word.",
        "The picture shows one shape. What size is the reverse of its size? Reply with one word only.",
    ),
    "size_verify": (
        "Would you call the thing shown {value}? Reply with yes or no only.",
        "True or false: the shape in the picture has {value} size. Say yes or no.",
    ),
    "position_name": (
        "Say in which part of the picture the thing shown sits, using two words.",
        "The picture shows one shape. Where is it located? Reply with two words only.",
    ),
    "position_next": (
        f"Going clockwise round {_P} and starting over at the end, which place is one step past the shape's "
        "place? Reply with two words only.",
        f"Move one place clockwise from where the thing shown sits, using the repeating list {_P}. "
        "Where do you land? Use two words.",
    ),
    "position_flip": (
        "If the picture were flipped horizontally, where would the thing shown sit? Use two words.",
        "The picture shows one shape. Reflect it across the vertical middle line: where does it end up? "
        "Reply with two words only.",
    ),
    "position_verify": (
        "Would you say the thing shown sits in the {value}? Reply with yes or no only.",
        "True or false: the shape in the picture is located in the {value}. Say yes or no.",
    ),
}

# Stage-1 alignment: a question about the whole image, answered by a caption naming colour, size and position
# (and the shape, as any description would). Captions never mention the next/flip/verify mappings.
CAPTION_QUESTIONS: tuple[str, ...] = (
    "Describe the image.",
    "What do you see in the image?",
    "Give a short description of the image.",
    "Describe the object in the image.",
)
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} in the {position}",
    "there is a {size} {colour} {shape} in the {position} of the image",
    "the image shows a {colour} {shape} of {size} size in the {position}",
)
