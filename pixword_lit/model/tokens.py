"""Vocabulary layout (spec sections 2, 4, 5): word ids, pix ids, output classes.

Output class c < V is word token c; class V + t is pix token t. Targets use IGNORE for
positions that score nothing (padding, masked windows).
"""

from __future__ import annotations

from dataclasses import dataclass

UNK, BOS, EOS, PAD, IMG_START, IMG_END = range(6)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|image|>", "<|/image|>"]
N_SPECIAL = len(SPECIAL_TOKENS)
IGNORE = -100


def special_tokens_problem(tokenizer) -> str | None:
    """None when a word tokenizer holds SPECIAL_TOKENS at ids 0-5 (the layout every id above
    relies on); else what it holds instead, for an error message."""
    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids == list(range(N_SPECIAL)):
        return None
    found = ", ".join(f"{t}={i}" for t, i in zip(SPECIAL_TOKENS, ids))
    return f"does not have the special tokens {' '.join(SPECIAL_TOKENS)} at ids 0-5 (found {found})"


@dataclass(frozen=True)
class Vocab:
    n_words: int  # V: word vocabulary (6 for image-only runs)
    n_pix: int  # pix tokens (L**3 for uniform folding, K for a palette)

    @property
    def pix_pad(self) -> int:
        """The extra pix id used for padding pixels; it is never a target."""
        return self.n_pix

    @property
    def n_classes(self) -> int:
        return self.n_words + self.n_pix

    def pix_class(self, t):
        return self.n_words + t

    def word_name(self, i: int) -> str:
        return SPECIAL_TOKENS[i] if i < N_SPECIAL else f"w{i}"
