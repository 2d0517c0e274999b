"""TextVQA scoring: the standard VQA answer normalisation and VQA accuracy (docs/benchmarks.md#textvqa).

Records (JSONL)::

    {"prediction": "coca cola", "answers": ["coca cola", "coca-cola", ..., "pepsi"]}   # 10 annotators
    {"prediction": "2 dogs", "target": "two dogs"}                                     # MixLoRA's single target

``answers`` (a list of strings) is used when present, else ``target`` (one string).

Normalisation (``normalize_answer``), the EvalAI/VQA processor used by LLaVA's m4c evaluator, in order:

1. lowercase; delete "," and "?"; insert a space before every "'s" ("dog's" -> "dog 's"); newlines and tabs
   become spaces; strip.
2. each of the punctuation marks ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! is deleted if the text contains
   that mark next to a space (before or after it) or contains digit-comma-digit, otherwise replaced by a
   space ("coca-cola" -> "coca cola", "yes !" -> "yes "). Then every "." not followed by a digit is deleted
   ("3.5" keeps its point; at most 32 per answer, an official quirk). Apostrophes and ":" are kept.
3. split on whitespace; number words none/zero..ten -> 0..10; drop the articles a/an/the; map
   contractions written without apostrophes to their standard form ("dont" -> "don't"); join with spaces.

The contraction table is the VQA one: for each contraction it recognises (``_CONTRACTIONS``) the keys are
the spellings with exactly one apostrophe left out ("couldnt've" and "couldn'tve" -> "couldn't've"). Its
quirks are kept: the keys built from "I'd've", "I'm", "I've" keep a capital I and so never match
lower-cased text, and "somebody'd" maps to "somebodyd".

Accuracy of one prediction p against n normalised answers a_1..a_n (``vqa_accuracy``):

    n == 1:  1 if p == a_1 else 0                                      (exact match after normalisation)
    n >= 2:  mean over k of min(#{j != k : a_j == p} / 3, 1)           (leave-one-out over the n annotators)

For the usual n = 10 this is the official rule: the average, over the 10 subsets of 9 annotators, of
min(#matches / 3, 1). E.g. 2 of 10 matching: the 2 subsets without a matcher give 1/3, the 8 others 2/3,
so (2·1/3 + 8·2/3) / 10 = 0.6; 3 matching: (3·2/3 + 7·1) / 10 = 0.9; 4 or more: 1.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from . import ScoringError, locate, require_field

_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBERS["none"] = "0"
_ARTICLES = frozenset(("a", "an", "the"))
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
                "!")
# Step 1 already deletes every comma, so this never fires in normalize_answer; kept so _punctuation is the
# complete official step.
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")

# The contractions the VQA evaluation recognises, in their standard spelling.
_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've it'll ma'am mightn't mightn't've
might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't
shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd
something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll they're
they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd where's where've
who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll
y'all'd've you'd you'd've you'll you're you've
""".split()


def _contraction_table() -> dict[str, str]:
    table = {}
    for word in _CONTRACTIONS:
        for i, ch in enumerate(word):
            if ch == "'":
                table[word[:i] + word[i + 1 :]] = word
    table["somebody'd"] = "somebodyd"  # a reversed entry in the official table, kept for exactness
    return table


_CONTRACTION_MAP = _contraction_table()


def _punctuation(text: str) -> str:
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _PUNCTUATION:
        # The test looks at the input text, not the partially cleaned one (as the official code does).
        delete = has_digit_comma or (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if delete else " ")
    # The official call passes re.UNICODE (= 32) where `count` goes, so at most 32 periods are deleted.
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=32)


def _digits_articles_contractions(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTION_MAP.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The VQA/EvalAI answer normalisation (steps in the module docstring)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles_contractions(_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy in [0, 1] of one raw prediction against raw reference answers (normalised here)."""
    if not answers:
        raise ScoringError("textvqa: a question needs at least one reference answer.")
    pred = normalize_answer(prediction)
    refs = [normalize_answer(a) for a in answers]
    if len(refs) == 1:
        return float(pred == refs[0])
    matches = sum(r == pred for r in refs)
    # Leaving out annotator k removes one match exactly when a_k itself matches.
    return sum(min((matches - (r == pred)) / 3, 1.0) for r in refs) / len(refs)


def score_textvqa(records: Sequence[Mapping]) -> dict:
    """Mean VQA accuracy in percent: ``{"accuracy", "count", "single_target", "multi_answer"}``."""
    if not records:
        raise ScoringError("textvqa: no records to score.")
    total, single = 0.0, 0
    for i, record in enumerate(records):
        prediction = require_field(records, i, "prediction", "textvqa")
        if "answers" in record:
            answers = require_field(records, i, "answers", "textvqa", (list,))
            if not answers or not all(isinstance(a, str) for a in answers):
                raise ScoringError(f"textvqa: {locate(records, i)}: 'answers' must be a non-empty list of strings.")
        elif "target" in record:
            answers = [require_field(records, i, "target", "textvqa")]
        else:
            raise ScoringError(
                f"textvqa: {locate(records, i)} has neither 'answers' (list of annotator answers) "
                "nor 'target' (string)."
            )
        single += len(answers) == 1
        total += vqa_accuracy(prediction, answers)
    return {
        "accuracy": 100.0 * total / len(records),
        "count": len(records),
        "single_target": single,
        "multi_answer": len(records) - single,
    }
