"""`pixword inspect`: exactly what the model sees for one image or one mixed document
(the worked example of spec section 5 comes out of this verbatim)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pixword_lit.data.elements import build_sample, image_windows, resize_longer_side
from pixword_lit.errors import ConfigError
from pixword_lit.model.components.folding import UniformFolding
from pixword_lit.model.tokens import IGNORE, N_SPECIAL, Vocab


def _windows(path, a, folding, vocab):
    from data_prep.imageio import load_rgb

    img = resize_longer_side(load_rgb(path), a.image_size, "upscale", "bicubic")
    return image_windows(np.asarray(img), a.image_size, a.window_size, folding, vocab)


def inspect_path(a) -> dict:
    if a.image_size % a.window_size:
        raise ConfigError(f"--window-size {a.window_size} does not divide --image-size {a.image_size}")
    folding = UniformFolding(a.fold)
    tokenizer = None
    if a.tokenizer:
        from data_prep.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(a.tokenizer)
    vocab = Vocab(tokenizer.get_vocab_size() if tokenizer else N_SPECIAL, folding.n_pix)
    path = Path(a.path)
    if path.suffix.lower() != ".txt":
        w = _windows(path, a, folding, vocab)
        return describe(build_sample([w], vocab, a.max_seq_len))
    from data_prep.documents import parse_document, read_document, resolve_image

    elements, shown = [], []
    for el in parse_document(read_document(path), str(path)):
        if el["type"] == "text":
            if tokenizer is None:
                raise ConfigError("--tokenizer: a document with text needs a tokenizer.json")
            elements.append(np.array(tokenizer.encode(el["text"], add_special_tokens=False).ids))
            shown.append({"type": "text", "text": el["text"]})
        else:
            if not a.images and not Path(el["name"]).is_absolute():
                raise ConfigError(f"--images: {path} references {el['name']!r}; give its folder")
            w = _windows(resolve_image(el["name"], a.images or "/"), a, folding, vocab)
            elements.append(w)
            shown.append({"type": "image", "name": el["name"], "windows": len(w.pix)})
    return {"elements": shown, **describe(build_sample(elements, vocab, a.max_seq_len))}


def describe(s: dict) -> dict:
    """Sample arrays -> the JSON fields `pixword inspect` prints."""
    inputs = [f"W{int(k)}" if k >= 0 else int(i) for i, k in zip(s["input_ids"], s["window_slot"])]
    return {
        "pix_tokens": s["pix"].tolist(),
        "window_mask": s["window_valid"].astype(int).tolist(),
        "summary_index": s["summary_index"].tolist(),
        "image_positions": s["pix_pos"].tolist(),
        "inputs": inputs,
        "targets": [int(t) if t != IGNORE else IGNORE for t in s["targets"]],
        "decoder_positions": s["positions"].tolist(),
    }
