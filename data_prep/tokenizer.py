"""Word tokenizer: byte-level BPE with NFKC, as the paper's (method.md section 6).

The six special tokens are added first so that they get ids 0-5; the model's vocabulary
layout depends on those exact ids, so training checks them instead of trusting order.
"""

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from pixword_lit.model.tokens import SPECIAL_TOKENS, special_tokens_problem

__all__ = ["SPECIAL_TOKENS", "train_tokenizer", "save_tokenizer", "load_tokenizer",
           "load_checked_tokenizer"]


def train_tokenizer(texts: Iterable[str], vocab_size: int, split_digits: bool = False) -> Tokenizer:
    """Train a byte-level BPE on `texts`; the result may be smaller than `vocab_size`.
    `split_digits`: every digit is its own pre-token, so no merge holds a digit with anything
    else (`prep glyphs --task reading`: one token per character of a digit answer)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  byte_level]) if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    problem = special_tokens_problem(tok)
    if problem:
        raise RuntimeError(f"the trained tokenizer {problem}")
    return tok


def save_tokenizer(tokenizer: Tokenizer, out: Path) -> Path:
    """Write OUT/tokenizer.json atomically (via a .tmp file), like every prep output."""
    path, tmp = out / "tokenizer.json", out / "tokenizer.json.tmp"
    tokenizer.save(str(tmp))
    os.replace(tmp, path)
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json written by `train_tokenizer(...).save()`."""
    return Tokenizer.from_file(str(path))


def load_checked_tokenizer(path: str | Path) -> Tokenizer:
    """Load an existing tokenizer.json for reuse (`prep mixed --tokenizer`): it must hold
    the six special tokens at ids 0-5, or the model's vocabulary layout would be wrong."""
    from .errors import UsageError

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # missing file, not JSON, not a tokenizer
        raise UsageError(f"tokenizer {path} cannot be loaded: {e}") from e
    problem = special_tokens_problem(tok)
    if problem:
        raise UsageError(f"tokenizer {path} {problem}; train one with `pixword prep mixed` instead")
    return tok
