"""Packing one document into samples that fit the model's sequence budget.

The loader lays a sample out as `<s>`, then per text element its tokens, per image
`<|image|>` + (image_size // window_size)**2 windows + `<|/image|>`, then `</s>`; that
must be at most max_seq_len + 1 elements (inputs and targets are max_seq_len each).
Images are never cut. Long text is cut at token boundaries taken from the encoding's
character offsets, preferring word boundaries, so every stored piece is a substring of
the original; each piece is re-encoded to check its count, since BPE of a substring can
differ from the tokens it was cut from.
"""

from tokenizers import Tokenizer


def image_cost(image_size: int, window_size: int) -> int:
    """Sequence elements one image takes: the two tags plus every window."""
    return 2 + (image_size // window_size) ** 2


def count_tokens(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def pack_document(
    elements: list[dict],
    tokenizer: Tokenizer,
    image_size: int,
    window_size: int,
    max_seq_len: int,
) -> tuple[list[list[dict]], list[dict]]:
    """Greedily fill samples in document order.

    Returns (samples, dropped): each sample is a list of elements; each dropped entry is
    {"element", "kind", "reason"} for an image that alone exceeds the budget (or text
    that cannot be cut to fit).
    """
    budget = max_seq_len - 1  # room left after <s> and </s>
    cost = image_cost(image_size, window_size)
    samples: list[list[dict]] = []
    dropped: list[dict] = []
    current: list[dict] = []
    used = 0

    def flush():
        nonlocal current, used
        if current:
            samples.append(current)
        current, used = [], 0

    for el in elements:
        if el["type"] == "image":
            if cost > budget:
                reason = f"an image takes {cost} elements, more than max_seq_len - 1 = {budget}"
                dropped.append({"element": el, "kind": "image_too_large", "reason": reason})
                continue
            if used + cost > budget:
                flush()
            current.append(el)
            used += cost
            continue
        text = el["text"]
        while text:
            piece, n, rest = _take_prefix(tokenizer, text, budget - used)
            if not piece and not current:
                reason = f"text cannot be cut into pieces of at most {budget} tokens"
                dropped.append(
                    {
                        "element": {"type": "text", "text": text},
                        "kind": "text_unsplittable",
                        "reason": reason,
                    }
                )
                break
            if piece:
                current.append({"type": "text", "text": piece})
                used += n
            if rest:
                flush()  # this sample is full; the rest starts the next one
            text = rest
    flush()
    return samples, dropped


def _take_prefix(tokenizer: Tokenizer, text: str, limit: int) -> tuple[str, int, str]:
    """The longest prefix of `text` (cut at a token boundary) that encodes to at most
    `limit` tokens: (prefix, its token count, stripped rest). ("", 0, text) if none."""
    if limit <= 0:
        return "", 0, text
    # Encode only a window of the text (doubled as needed) so long documents stay linear.
    window = 8 * (limit + 1)
    while True:
        enc = tokenizer.encode(text[:window], add_special_tokens=False)
        if window >= len(text):
            if len(enc.ids) <= limit:
                return text, len(enc.ids), ""
            break
        if len(enc.ids) > limit + 1:
            break
        window *= 2
    offsets = enc.offsets
    # Boundary k puts tokens [0, k) in the prefix; it must not fall inside a character
    # that several byte tokens share (their offsets overlap).
    cuts = [
        offsets[k][0]
        for k in range(min(limit, len(offsets) - 1), 0, -1)
        if offsets[k][0] >= offsets[k - 1][1]
    ]
    near = cuts[: max(1, limit // 2)]  # word boundaries only if they keep most of the room
    words = [c for c in near if text[c].isspace() or text[c - 1].isspace()]
    for c in words + cuts:
        piece = text[:c].rstrip()
        if piece:
            n = count_tokens(tokenizer, piece)
            if n <= limit:
                return piece, n, text[c:].lstrip()
    return "", 0, text
