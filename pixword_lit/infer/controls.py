"""Controls of the reading eval: what a model that never looks at the image would score.

They come from the **train split's** documents that the eval would take (text continuing after
the last image with the prefix; any mixed shards, not only glyphs). Of each: the continuation
`r` (the text after the prefix: what `eval/answer_nll` scores, in the run's tokens, `</s>`
excluded) and the answer `a` (r cut at the end marker). N train continuations; V the size of
the run's word tokenizer; K the number of distinct tokens in all train continuations.

- **blind floor**, `eval/blind_nll`: nats per token of the val continuations under the
  better of two image-blind priors fitted on train, for each document, summed over documents /
  tokens like answer NLL: min(-ln p_emp(r), -ln p_pos(r)), where p_emp(r) = (train
  continuations equal to r) / N (the empirical distribution of whole continuations) and
  p_pos(r) = prod_j q_j(r_j), a model of the token at each position j:
  q_j(t) = (c_j(t) + 1) / (N_j + K + 1) for a token t seen in a train continuation (c_j(t):
  train continuations whose token j is t; N_j: those longer than j tokens), and
  1 / ((N_j + K + 1) (V - K)) for any other token. p_emp suits a closed set of answers, p_pos
  answers never seen in train; the better of the two per document is lower than either alone
  (not itself a distribution).
- **blind exact match**, `eval/blind_exact_match`: the exact match of always answering the
  most frequent train answer (ties: the first in sorted order).
- **chance**, `eval/chance_exact_match`: the expected exact match of answering with a draw from
  the train answers' empirical distribution = the mean over val documents of
  (train answers equal to the val answer) / N.
- **seen**: a val document whose answer equals some train answer; exact match, CER, answer
  NLL and the controls are reported for seen and unseen documents apart.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from pixword_lit.infer.load import documents


def continuation(els: list[dict], last: int | None, prefix: str) -> tuple[str | None, str]:
    """(text after the prefix or None, why not) of a document's element dicts, `last` the
    index of its last image: the first text element after it, if it starts with the prefix."""
    after = [e["text"] for e in els[(last if last is not None else len(els)) + 1 :] if e["type"] == "text"]
    if last is None or not after:
        return None, "no_text_after_image"
    if not after[0].startswith(prefix):
        return None, "no_prefix"
    return after[0][len(prefix) :], ""


@dataclass
class Prior:
    """The image-blind prior of the train continuations (module docstring)."""

    vocab_size: int
    n: int = 0
    sequences: Counter = field(default_factory=Counter)  # token tuple -> train continuations
    answers: Counter = field(default_factory=Counter)  # answer -> train continuations
    positions: list = field(default_factory=list)  # j -> Counter of the token at j
    known: set = field(default_factory=set)  # tokens of any train continuation (K of them)

    @classmethod
    def fit(cls, pairs, vocab_size: int) -> Prior:
        """`pairs`: (answer, continuation token ids) of every train continuation."""
        p = cls(vocab_size)
        for answer, ids in pairs:
            ids = tuple(int(t) for t in ids)
            p.n += 1
            p.answers[answer] += 1
            p.sequences[ids] += 1
            for j, t in enumerate(ids):
                if j == len(p.positions):
                    p.positions.append(Counter())
                p.positions[j][t] += 1
        p.known = {t for c in p.positions for t in c}
        return p

    def log_q(self, j: int, t: int) -> float:
        k = len(self.known)
        c = self.positions[j] if j < len(self.positions) else Counter()
        denom = sum(c.values()) + k + 1
        if t in self.known:
            return math.log((c[t] + 1) / denom)
        return -math.log(denom * max(self.vocab_size - k, 1))

    def log_prob(self, ids) -> float:
        """max(ln p_emp(r), ln p_pos(r)) of a continuation's token ids (the module docstring)."""
        ids = tuple(int(t) for t in ids)
        pos = sum(self.log_q(j, t) for j, t in enumerate(ids))
        emp = self.sequences[ids] / self.n if self.n else 0.0
        return max(math.log(emp), pos) if emp > 0 else pos

    def most_frequent(self) -> str | None:
        if not self.answers:
            return None
        top = max(self.answers.values())
        return min(a for a, c in self.answers.items() if c == top)

    def chance(self, answer: str) -> float:
        return self.answers[answer] / self.n if self.n else float("nan")


def fit_prior(run, spec: str, prefix: str, end: str, cut) -> Prior:
    """The prior of the train split `spec` (mixed shards), tokenized by the run's tokenizer."""
    rests = Counter()
    for _, _, els, last in documents(spec, "--train"):
        rest, _ = continuation(els, last, prefix)
        if rest is not None:
            rests[rest] += 1
    pairs = [(cut(rest, end), run.text(rest)) for rest, c in sorted(rests.items()) for _ in range(c)]
    return Prior.fit(pairs, run.tokenizer.get_vocab_size())


def control_scores(prior: Prior, docs: list[dict]) -> dict:
    """The controls over `docs`, each {"answer", "ids" (continuation tokens)}."""
    if not docs:
        return {"blind_nll": float("nan"), "blind_exact_match": float("nan"),
                "chance_exact_match": float("nan")}
    top = prior.most_frequent()
    nats = -sum(prior.log_prob(d["ids"]) for d in docs)
    tokens = sum(len(d["ids"]) for d in docs)
    return {
        "blind_nll": nats / max(tokens, 1) if prior.n else float("nan"),
        "blind_exact_match": sum(d["answer"] == top for d in docs) / len(docs) if prior.n else float("nan"),
        "chance_exact_match": sum(prior.chance(d["answer"]) for d in docs) / len(docs),
    }
