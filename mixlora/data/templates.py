"""Conversation templates (LLaVA's ``vicuna_v1``, ``llava_v1``, ``plain``) and label masking by construction.

A conversation is a list of turns ``(role, text)`` with role ``"human"`` or ``"gpt"``, alternating and starting
with ``"human"`` (the Vision-Flan / LLaVA JSON format). Rendering produces :class:`Segment` s whose
concatenated text is exactly LLaVA's ``Conversation.get_prompt()`` string, e.g. for ``vicuna_v1``::

    "<system> USER: <image>\\n{instruction} ASSISTANT: {answer}</s>USER: {q2} ASSISTANT: {a2}</s>"

and for generation (prompt only)::

    "<system> USER: <image>\\n{instruction} ASSISTANT:"

``plain`` (LLaVA pretraining) drops the instruction: ``"<image>{caption}\\n"``.

Each segment carries a ``supervised`` flag, so the labels come from the segment a token was produced from, never
from counting tokens afterwards (the released code's "token count - 2" arithmetic silently misaligns with
some tokenizers). Supervised segments are the assistant answers and their end token; everything else (BOS,
system prompt, user turns, role tags, the image placeholder) gets ``IGNORE_INDEX``. The space between
"ASSISTANT:" and the answer belongs to the answer segment, because tokenizers attach a space to the following
word ("Ġword" in byte-level BPE, "▁word" in SentencePiece), as in LLaVA where that token is supervised.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixlora.constants import IGNORE_INDEX, IMAGE_TOKEN
from mixlora.options import check_choice

SEGMENT_KINDS = ("text", "image", "eos")
SEPARATOR_STYLES = ("two", "plain")
HUMAN, GPT = "human", "gpt"


@dataclass(frozen=True)
class ConversationTemplate:
    """A LLaVA conversation template.

    ``style="two"``: ``system + sep + "ROLE0: q" + sep + "ROLE1: a" + sep2 + "ROLE0: q2" ...``
    ``style="plain"``: ``image + answer + sep`` (exactly one human turn, whose text is replaced by the image).
    """

    name: str
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str
    style: str

    def __post_init__(self):
        check_choice("style", self.style, SEPARATOR_STYLES)


TEMPLATES = {
    # The paper's training template (LLaVA `conv_vicuna_v1`, selected by `--version v1`).
    "vicuna_v1": ConversationTemplate(
        name="vicuna_v1",
        system="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        roles=("USER", "ASSISTANT"),
        sep=" ",
        sep2="</s>",
        style="two",
    ),
    # The released evaluation template (LLaVA `conv_llava_v1`): "human" instead of "user", otherwise identical.
    "llava_v1": ConversationTemplate(
        name="llava_v1",
        system="A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions.",
        roles=("USER", "ASSISTANT"),
        sep=" ",
        sep2="</s>",
        style="two",
    ),
    # vicuna_v1 without its system prompt ("USER: <image>\n{instruction} ASSISTANT: {answer}</s>"): the CPU testbed's
    # template, where a constant 28-token prefix would only double the sequence length of a 16-image-token prompt.
    "vicuna_v1_nosys": ConversationTemplate(
        name="vicuna_v1_nosys", system="", roles=("USER", "ASSISTANT"), sep=" ", sep2="</s>", style="two"),
    # LLaVA projector pretraining (`conv_llava_plain`): image, caption, newline.
    "plain": ConversationTemplate(name="plain", system="", roles=("", ""), sep="\n", sep2="", style="plain"),
}


def get_template(name: str) -> ConversationTemplate:
    """Look up a template by name (``vicuna_v1``, ``llava_v1`` or ``plain``)."""
    check_choice("template", name, tuple(TEMPLATES))
    return TEMPLATES[name]


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered conversation.

    kind: ``"text"`` (tokenised), ``"image"`` (one image placeholder token, later expanded to N patch positions)
    or ``"eos"`` (the tokenizer's EOS id; ``text`` is the template's literal end marker, e.g. ``"</s>"``).
    instruction: ``(start, end)`` character span of ``text`` holding the first user turn's instruction (no system
    prompt, role tags or image), or None. ``encode_segments(..., instruction=True)`` maps it to token positions.
    """

    kind: str
    text: str
    supervised: bool
    instruction: tuple[int, int] | None = None


def move_image_to_front(text: str, with_image: bool = True) -> str:
    """LLaVA's placement: drop every ``<image>`` tag, strip, then put ``"<image>\\n"`` in front (if ``with_image``).

    Vision-Flan writes the tag at the end of the instruction ("...Options: (a) x (b) y\\n<image>").
    An empty remainder gives just ``"<image>"`` (LLaVA strips the result).
    """
    rest = text.replace(IMAGE_TOKEN, "").strip()
    if not with_image:
        return rest
    return f"{IMAGE_TOKEN}\n{rest}".strip()


def _check_turns(turns, style: str) -> None:
    if not turns:
        raise ValueError("conversation has no turns; expected alternating human/gpt turns starting with human")
    for i, (role, text) in enumerate(turns):
        expected = HUMAN if i % 2 == 0 else GPT
        if role != expected:
            raise ValueError(f"turn {i} has role {role!r}; expected {expected!r} (turns alternate human, gpt, ...)")
        if not isinstance(text, str):
            raise ValueError(f"turn {i} value is {type(text).__name__}, expected a string")
    if style == "plain" and len(turns) != 2:
        raise ValueError(f"the plain template takes exactly one human and one gpt turn, got {len(turns)} turns")


def _image_split(text: str, with_image: bool) -> tuple[bool, str]:
    """Split a first human turn after placement into (has image tag, text after the tag)."""
    placed = move_image_to_front(text, with_image)
    if not with_image:
        return False, placed
    return True, placed[len(IMAGE_TOKEN) :]  # "" or "\n{instruction}"


def render_conversation(template: ConversationTemplate, turns, with_image: bool = True) -> list[Segment]:
    """Render a full conversation for training, ending with the last answer and its end marker.

    ``turns``: sequence of ``(role, text)``; must alternate human/gpt, start with human and end with gpt.
    ``with_image``: place one ``<image>`` at the front of the first human turn (any tags already in the text
    are moved there; a tag in a later turn is an error, since a sample has exactly one image).
    """
    _check_turns(turns, template.style)
    if len(turns) % 2:
        raise ValueError("conversation ends with a human turn; training needs every human turn answered")
    for i, (_, text) in enumerate(turns[1:], start=1):
        if IMAGE_TOKEN in text:
            raise ValueError(f"turn {i} contains {IMAGE_TOKEN!r}; only the first human turn may hold the image")
    if template.style == "plain":
        return _render_plain(turns[1][1], with_image, template.sep)
    segments = _render_two_prompt(template, turns[0][1], with_image, system=True)
    for i in range(1, len(turns), 2):
        segments.append(Segment("text", " " + turns[i][1], True))
        segments.append(Segment("eos", template.sep2, True))
        if i + 1 < len(turns):
            segments.extend(_render_two_prompt(template, turns[i + 1][1], False, system=False))
    return segments


def render_prompt(template: ConversationTemplate, question: str, with_image: bool = True) -> list[Segment]:
    """Render a single-turn prompt for generation, ending with the assistant role tag (``"... ASSISTANT:"``).

    ``plain`` renders only the image (the pretraining format has no instruction).
    """
    if template.style == "plain":
        return [Segment("image", IMAGE_TOKEN, False)] if with_image else []
    return _render_two_prompt(template, question, with_image, system=True)


def _render_two_prompt(template, text: str, with_image: bool, system: bool) -> list[Segment]:
    user, assistant = template.roles
    head = (template.system + template.sep if system and template.system else "") + f"{user}: "
    tail = f"{template.sep}{assistant}:"
    if not system:
        return [Segment("text", head + text + tail, False)]
    has_image, rest = _image_split(text, with_image)
    # The instruction is the user text without the newline that follows the image tag.
    skip = 1 if rest.startswith("\n") else 0
    if not has_image:
        return [Segment("text", head + rest + tail, False, (len(head) + skip, len(head) + len(rest)))]
    return [Segment("text", head, False), Segment("image", IMAGE_TOKEN, False),
            Segment("text", rest + tail, False, (skip, len(rest)))]


def _render_plain(answer: str, with_image: bool, sep: str) -> list[Segment]:
    segments = [Segment("image", IMAGE_TOKEN, False)] if with_image else []
    return segments + [Segment("text", answer + sep, True)]


def segments_to_text(segments) -> str:
    """The rendered string (what LLaVA's ``get_prompt()`` returns)."""
    return "".join(s.text for s in segments)


def _encode_text(tokenizer, text: str, continuation: bool, anchor: list[int] | None = None,
                 offsets: bool = False):
    """Token ids of ``text``; for a continuation, as if it followed other text (no SentencePiece dummy prefix).

    SentencePiece tokenizers (LLaMA/Vicuna) prepend "▁" to every separately tokenised string, so "USER" alone
    becomes "▁USER" where whole-text tokenisation gives "USER". We tokenise ``"\\n" + text`` and drop the ids of
    ``"\\n"`` when they form a prefix; otherwise (byte-level BPE, where nothing is prepended) plain tokenisation
    is already the continuation form.

    ``offsets=True`` returns ``(ids, spans)``: each token's ``(start, end)`` character range in ``text``, from the
    same tokenisation (a fast tokenizer's ``offset_mapping``); needs a fast tokenizer.
    """
    if IMAGE_TOKEN in text:
        raise ValueError(f"text segment {text!r} contains {IMAGE_TOKEN!r}; images must be separate segments")
    if offsets and not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"routing on the instruction needs a fast tokenizer (offset mappings); "
                         f"{type(tokenizer).__name__} is not one. Load it with use_fast=True.")
    if not text:
        return ([], []) if offsets else []

    def tokens(string: str):
        return tokenizer(string, add_special_tokens=False, return_offsets_mapping=offsets)

    def pick(enc, drop: int = 0, shift: int = 0):
        ids = enc["input_ids"][drop:]
        return (ids, [(a - shift, b - shift) for a, b in enc["offset_mapping"][drop:]]) if offsets else ids

    if not continuation:
        return pick(tokens(text))
    if anchor is None:
        anchor = tokenizer("\n", add_special_tokens=False)["input_ids"]
    joined = tokens("\n" + text)
    if anchor and joined["input_ids"][: len(anchor)] == anchor:
        return pick(joined, drop=len(anchor), shift=1)
    return pick(tokens(text))


def _overlapping(spans: list[tuple[int, int]], span: tuple[int, int]) -> list[bool]:
    """Which token character ranges share at least one character with ``span`` (empty ranges never do)."""
    start, end = span
    return [a < end and b > start and b > a for a, b in spans]


def image_token_id_of(tokenizer) -> int:
    """The id of the ``<image>`` special token; raises if the tokenizer lacks it."""
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(
            f"the tokenizer has no {IMAGE_TOKEN!r} token; load it with mixlora.data.tokenizer.load_tokenizer "
            "(which adds it) or build one with build_tokenizer"
        )
    return token_id


def encode_segments(segments, tokenizer, add_bos: bool = True, instruction: bool = False):
    """Tokenise segment by segment and concatenate: returns ``(input_ids, labels)``, both of length L.

    labels[t] = input_ids[t] where the token came from a supervised segment, else IGNORE_INDEX.
    BOS (if ``add_bos`` and the tokenizer has one) starts the sequence and is never supervised. Each image
    segment becomes ONE ``<image>`` id here; :func:`expand_image_tokens` widens it to the patch count.

    ``instruction=True`` returns ``(input_ids, labels, span)`` with ``span = (start, end)``: the token positions
    [start, end) of the first segment's instruction (``Segment.instruction``; tokens that share a character with
    it), or None when no segment marks one. Needs a fast tokenizer. The ids are the same either way.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    span = None
    if add_bos and tokenizer.bos_token_id is not None:
        input_ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    image_id = None
    anchor = tokenizer("\n", add_special_tokens=False)["input_ids"]
    started = False  # the first segment is tokenised as the start of a text, later ones as continuations
    for seg in segments:
        check_choice("segment kind", seg.kind, SEGMENT_KINDS)
        if seg.kind == "image":
            image_id = image_id if image_id is not None else image_token_id_of(tokenizer)
            ids = [image_id]
        elif seg.kind == "eos":
            if tokenizer.eos_token_id is None:
                raise ValueError("the tokenizer has no EOS token; the template needs one to end answers")
            ids = [tokenizer.eos_token_id]
        else:
            if instruction and span is None and seg.instruction is not None:
                ids, spans = _encode_text(tokenizer, seg.text, continuation=started, anchor=anchor, offsets=True)
                marked = [t for t, flag in enumerate(_overlapping(spans, seg.instruction)) if flag]
                if marked:
                    span = (len(input_ids) + marked[0], len(input_ids) + marked[-1] + 1)
            else:
                ids = _encode_text(tokenizer, seg.text, continuation=started, anchor=anchor)
        input_ids.extend(ids)
        labels.extend(ids if seg.supervised else [IGNORE_INDEX] * len(ids))
        started = started or bool(ids)
    if instruction:
        return input_ids, labels, span
    return input_ids, labels


def shift_span(span: tuple[int, int] | None, input_ids, image_token_id: int, num_image_tokens: int):
    """``span`` (token positions before :func:`expand_image_tokens`) -> positions after it: each image id before
    the span's start adds ``num_image_tokens - 1`` positions (the instruction itself never holds an image)."""
    if span is None:
        return None
    before = sum(1 for t in input_ids[: span[0]] if t == image_token_id)
    extra = before * (num_image_tokens - 1)
    return span[0] + extra, span[1] + extra


def expand_image_tokens(input_ids, labels, image_token_id: int, num_image_tokens: int):
    """Replace each ``<image>`` id with ``num_image_tokens`` consecutive copies (labels IGNORE_INDEX there).

    Input lists of length L with k image ids -> lists of length L + k * (num_image_tokens - 1). This is the
    data side of the model contract: the model scatters the N projected patch features into exactly these
    positions, in order.
    """
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    out_ids: list[int] = []
    out_labels: list[int] = []
    for tok, lab in zip(input_ids, labels, strict=True):
        if tok == image_token_id:
            out_ids.extend([image_token_id] * num_image_tokens)
            out_labels.extend([IGNORE_INDEX] * num_image_tokens)
        else:
            out_ids.append(tok)
            out_labels.append(lab)
    return out_ids, out_labels
