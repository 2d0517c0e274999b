"""Tokenizers: a tiny byte-level BPE trained locally (tests, tiny runs) and loading a real model's tokenizer.

Nothing is fetched from a hub: ``build_tokenizer`` trains on texts you pass (~0.01 s for a small corpus) and
``load_tokenizer`` reads a local folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from mixlora.constants import BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, PAD_TOKEN, UNK_TOKEN

logger = logging.getLogger(__name__)

# Fixed order, so the tiny tokenizer's special ids are always unk=0, bos=1, eos=2, pad=3, image=4.
SPECIAL_TOKENS = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN)
_BYTE_ALPHABET = 256


def _corpus_key(texts: list[str], vocab_size: int, min_frequency: int) -> str:
    digest = hashlib.sha256()
    settings = {"kind": "byte_level_bpe", "vocab_size": vocab_size, "min_frequency": min_frequency,
                "special_tokens": SPECIAL_TOKENS, "version": 1}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")  # so ["ab", "c"] and ["a", "bc"] hash differently
    return digest.hexdigest()[:16]


def _wrap(tokenizer_object):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IMAGE_TOKEN],
        # Byte-level decoding is exact; the "clean-up" pass would delete spaces before punctuation.
        clean_up_tokenization_spaces=False,
    )


def _train(texts: list[str], vocab_size: int, min_frequency: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # Every byte is in the initial alphabet, so any UTF-8 text (accents, CJK, emoji) round-trips exactly.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # added tokens: matched before BPE, so "<image>" never merges
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def build_tokenizer(texts, vocab_size: int = 1024, save_dir: str | None = None, min_frequency: int = 2):
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Special tokens (ids fixed): ``<unk>``=0, ``<s>``=1 (bos), ``</s>``=2 (eos), ``<pad>``=3, ``<image>``=4.
    ``<image>`` is an added special token: it is always one id and never merges with neighbouring text.
    Calling the tokenizer does not add BOS/EOS by itself (``encode_segments`` adds BOS explicitly).

    texts: any iterable of strings (consumed once). vocab_size: total size including the 256 byte tokens and
    the 5 special tokens (the trainer may stop earlier on a small corpus). save_dir: if given, the tokenizer is
    cached under ``save_dir/bpe-<hash>`` where the hash covers the corpus and the settings; a second call
    with the same corpus loads it instead of training.
    """
    texts = [str(t) for t in texts]
    minimum = _BYTE_ALPHABET + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least {minimum} "
                         f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    if not texts:
        raise ValueError("build_tokenizer got no texts to train on")
    if save_dir is None:
        return _wrap(_train(texts, vocab_size, min_frequency))

    from transformers import PreTrainedTokenizerFast

    target = Path(save_dir) / f"bpe-{_corpus_key(texts, vocab_size, min_frequency)}"
    if (target / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(target))
    tokenizer = _wrap(_train(texts, vocab_size, min_frequency))
    target.parent.mkdir(parents=True, exist_ok=True)
    # Save into a temporary folder and rename, so concurrent builders never see a half-written cache entry.
    tmp = tempfile.mkdtemp(dir=target.parent, prefix=".tmp-bpe-")
    tokenizer.save_pretrained(tmp)
    try:
        os.rename(tmp, target)
    except OSError:  # another process won the race; its identical copy stays
        if not (target / "tokenizer.json").is_file():
            raise
        logger.debug("tokenizer cache %s was written concurrently; keeping the existing copy", target)
    return tokenizer


def load_tokenizer(path: str, pad_token: str | None = None):
    """Load a real model's tokenizer from a local folder and make it ready for multimodal data.

    - ``<image>`` is added as a special token when absent (its id is logged; the model builder must then
      resize the LLM embeddings to ``len(tokenizer)``).
    - Padding: ``pad_token`` if given; else the tokenizer's own pad; else ``unk`` (what LLaVA does for
      Vicuna); else ``eos``. Padding positions are always masked by the collator's attention mask and labels,
      so sharing an id with unk/eos is harmless.
    """
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer folder {path!r} does not exist; pass a local folder holding the model's "
                                "tokenizer files (nothing is downloaded)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    elif tokenizer.pad_token is None:
        fallback = tokenizer.unk_token or tokenizer.eos_token
        if fallback is None:
            raise ValueError(f"tokenizer in {path!r} has no pad, unk or eos token; pass pad_token=...")
        tokenizer.pad_token = fallback
        logger.info("tokenizer %s has no pad token; padding with %r (id %d)", path, fallback, tokenizer.pad_token_id)
    if not _image_token_is_atomic(tokenizer):
        before = len(tokenizer)
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
        logger.warning("added %r to the tokenizer in %s as special token id %d; resize the model's embeddings "
                       "from %d to len(tokenizer)=%d", IMAGE_TOKEN, path, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                       before, len(tokenizer))
        if not _image_token_is_atomic(tokenizer):
            raise ValueError(f"could not make {IMAGE_TOKEN!r} a single token in the tokenizer from {path!r}")
    return tokenizer


def _image_token_is_atomic(tokenizer) -> bool:
    """True if ``<image>`` inside text always becomes its own single id (a special/added token)."""
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return False
    ids = tokenizer(f"a{IMAGE_TOKEN}{IMAGE_TOKEN}b", add_special_tokens=False)["input_ids"]
    return ids.count(token_id) == 2
