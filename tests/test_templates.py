"""Conversation templates against LLaVA's strings, and label masking checked token by token.

Expected strings are written by hand from LLaVA's ``conversation.py`` (``get_prompt`` with SeparatorStyle.TWO:
``system + sep + "USER: " + q + sep + "ASSISTANT: " + a + sep2``) and ``preprocess_plain``.
Token-level checks use a byte-level BPE with no merges (vocab = 256 bytes + 5 specials), where every ASCII
character is exactly one token, so positions can be counted by hand from string lengths.
"""

import pytest

from mixlora.constants import IGNORE_INDEX
from mixlora.data.templates import (
    encode_segments,
    expand_image_tokens,
    get_template,
    move_image_to_front,
    render_conversation,
    render_prompt,
    segments_to_text,
)
from mixlora.data.tokenizer import build_tokenizer

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the human's questions.")
# A Vision-Flan human turn: the tag sits at the end.
INSTRUCTION = "Identify the appliance.\nOptions: (a) oven (b) microwave\n<image>"
ANSWER = "(b) microwave"


@pytest.fixture(scope="module")
def byte_tokenizer():
    """No merges: one token per byte; ids 0-4 are <unk>, <s>, </s>, <pad>, <image>."""
    tok = build_tokenizer(["some text to train on"], vocab_size=261)
    assert len(tok) == 261
    return tok


@pytest.fixture(scope="module")
def bpe_tokenizer():
    corpus = [VICUNA_SYSTEM, LLAVA_SYSTEM, INSTRUCTION, ANSWER, "USER: ASSISTANT: What is it? A cat. Sure? Yes"] * 4
    return build_tokenizer(corpus, vocab_size=600)


def test_vicuna_v1_string_matches_llava():
    segments = render_conversation(get_template("vicuna_v1"), [("human", INSTRUCTION), ("gpt", ANSWER)])
    expected = (VICUNA_SYSTEM + " USER: <image>\nIdentify the appliance.\nOptions: (a) oven (b) microwave"
                " ASSISTANT: (b) microwave</s>")
    assert segments_to_text(segments) == expected


def test_multi_turn_string_matches_llava():
    turns = [("human", "<image>\nWhat is it?"), ("gpt", "A cat."), ("human", "Sure?"), ("gpt", "Yes")]
    text = segments_to_text(render_conversation(get_template("vicuna_v1"), turns))
    assert text == VICUNA_SYSTEM + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Sure? ASSISTANT: Yes</s>"


def test_llava_v1_prompt_for_generation():
    segments = render_prompt(get_template("llava_v1"), "What is it?\nOptions: cat, dog")
    assert segments_to_text(segments) == LLAVA_SYSTEM + " USER: <image>\nWhat is it?\nOptions: cat, dog ASSISTANT:"
    assert not any(s.supervised for s in segments)


def test_plain_template_is_image_caption_newline():
    segments = render_conversation(get_template("plain"), [("human", "Describe.\n<image>"), ("gpt", "A red square.")])
    assert segments_to_text(segments) == "<image>A red square.\n"
    assert segments_to_text(render_prompt(get_template("plain"), "ignored")) == "<image>"


@pytest.mark.parametrize("text, expected", [
    ("Q?\n<image>", "<image>\nQ?"),            # Vision-Flan: tag at the end
    ("<image>\nQ?", "<image>\nQ?"),            # LLaVA: already in front
    ("Look <image> here", "<image>\nLook  here"),
    ("Q?", "<image>\nQ?"),                     # text-only sample: the image is still placed
    ("<image>", "<image>"),                    # LLaVA strips the result
])
def test_image_tag_moves_to_front(text, expected):
    assert move_image_to_front(text) == expected


def test_masking_by_hand_single_turn(byte_tokenizer):
    """Which tokens are supervised: exactly " (b) microwave" and </s>, counted from string lengths."""
    tok = byte_tokenizer
    segments = render_conversation(get_template("vicuna_v1"), [("human", INSTRUCTION), ("gpt", ANSWER)])
    ids, labels = encode_segments(segments, tok)
    head = VICUNA_SYSTEM + " USER: "                                    # before the image
    tail = "\nIdentify the appliance.\nOptions: (a) oven (b) microwave ASSISTANT:"  # image .. role tag
    answer = " " + ANSWER
    assert len(ids) == 1 + len(head) + 1 + len(tail) + len(answer) + 1
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
    image_pos = 1 + len(head)
    assert ids[image_pos] == tok.convert_tokens_to_ids("<image>") and labels[image_pos] == IGNORE_INDEX
    first = image_pos + 1 + len(tail)
    assert all(lab == IGNORE_INDEX for lab in labels[:first])
    assert labels[first:] == ids[first:]
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[first:]) == " (b) microwave</s>"
    assert tok.decode(ids[1:first]) == head + "<image>" + tail


def test_masking_multi_turn_supervises_each_answer(bpe_tokenizer):
    tok = bpe_tokenizer
    turns = [("human", "What is it?\n<image>"), ("gpt", "A cat."), ("human", "Sure?"), ("gpt", "Yes")]
    ids, labels = encode_segments(render_conversation(get_template("vicuna_v1"), turns), tok)
    spans, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    spans.append(current)
    assert [tok.decode(s) for s in spans] == [" A cat.</s>", " Yes</s>"]


def test_segments_tokenise_like_the_whole_string(bpe_tokenizer):
    """For a byte-level BPE, segment-wise tokenisation equals tokenising the rendered string in one go."""
    tok = bpe_tokenizer
    turns = [("human", INSTRUCTION), ("gpt", ANSWER), ("human", "Sure?"), ("gpt", "Yes")]
    segments = render_conversation(get_template("vicuna_v1"), turns)
    ids, _ = encode_segments(segments, tok)
    whole = tok(segments_to_text(segments), add_special_tokens=False)["input_ids"]
    assert ids == [tok.bos_token_id] + whole


def test_generation_prompt_is_training_prefix(bpe_tokenizer):
    """The prompt given to generate() is exactly the training sequence up to its first supervised token."""
    tok = bpe_tokenizer
    chat = get_template("vicuna_v1")
    train_ids, labels = encode_segments(render_conversation(chat, [("human", INSTRUCTION), ("gpt", ANSWER)]), tok)
    prompt_ids, prompt_labels = encode_segments(render_prompt(chat, INSTRUCTION), tok)
    first = next(t for t, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert prompt_ids == train_ids[:first]
    assert set(prompt_labels) == {IGNORE_INDEX}


def test_plain_masking(byte_tokenizer):
    tok = byte_tokenizer
    ids, labels = encode_segments(render_conversation(get_template("plain"), [("human", "<image>"), ("gpt", "Hi")]),
                                  tok)
    assert ids == [tok.bos_token_id, 4] + list(tok("Hi\n", add_special_tokens=False)["input_ids"])
    assert labels == [IGNORE_INDEX, IGNORE_INDEX] + ids[2:]
    assert len(ids) == 2 + len("Hi\n")


def test_expand_image_tokens_count_and_position():
    ids, labels = expand_image_tokens([1, 5, 4, 6, 7], [-100, -100, -100, 6, 7], image_token_id=4, num_image_tokens=3)
    assert ids == [1, 5, 4, 4, 4, 6, 7]
    assert labels == [-100, -100, -100, -100, -100, 6, 7]


@pytest.mark.parametrize("turns, message", [
    ([("gpt", "a"), ("human", "q")], "turn 0 has role 'gpt'"),
    ([("human", "q"), ("assistant", "a")], "turn 1 has role 'assistant'"),
    ([("human", "q")], "ends with a human turn"),
    ([("human", "q"), ("gpt", "a"), ("human", "<image> again"), ("gpt", "b")], "only the first human turn"),
])
def test_bad_conversations_raise(turns, message):
    with pytest.raises(ValueError, match=message):
        render_conversation(get_template("vicuna_v1"), turns)


def test_plain_needs_one_exchange_and_unknown_template():
    with pytest.raises(ValueError, match="exactly one human and one gpt turn"):
        render_conversation(get_template("plain"), [("human", "a"), ("gpt", "b"), ("human", "c"), ("gpt", "d")])
    with pytest.raises(ValueError, match="template='vicuna' is not a valid option.*'vicuna_v1'"):
        get_template("vicuna")


def test_sentencepiece_style_tokenizer_segments_match_whole_string():
    """LLaMA-style tokenizer (Metaspace "▁" prefix on the first piece, byte fallback): segments tokenised one by
    one equal the tokenizer's own whole-string tokenisation, i.e. no stray "▁" at segment boundaries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    raw.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(prepend_scheme="first")])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    raw.train_from_iterator([VICUNA_SYSTEM, "USER: What is it? ASSISTANT: A cat. Sure? Yes"] * 5, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", "<image>"] + byte_tokens, show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  extra_special_tokens=["<image>"])
    turns = [("human", "What is it?\n<image>"), ("gpt", "A cat."), ("human", "Sure?"), ("gpt", "Yes")]
    segments = render_conversation(get_template("vicuna_v1"), turns)
    ids, labels = encode_segments(segments, tok)
    assert ids == [tok.bos_token_id] + tok(segments_to_text(segments), add_special_tokens=False)["input_ids"]
    supervised = [tok.convert_ids_to_tokens(i) for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert supervised == ["▁A", "▁cat.", "</s>", "▁Yes", "</s>"]


def test_vicuna_without_system_prompt_is_vicuna_minus_its_prefix():
    turns = [("human", INSTRUCTION), ("gpt", ANSWER)]
    text = segments_to_text(render_conversation(get_template("vicuna_v1_nosys"), turns))
    assert text == ("USER: <image>\nIdentify the appliance.\nOptions: (a) oven (b) microwave ASSISTANT: "
                    "(b) microwave</s>")
    full = segments_to_text(render_conversation(get_template("vicuna_v1"), turns))
    assert full == VICUNA_SYSTEM + " " + text
    prompt = segments_to_text(render_prompt(get_template("vicuna_v1_nosys"), "Is it red?", with_image=True))
    assert prompt == "USER: <image>\nIs it red? ASSISTANT:"
