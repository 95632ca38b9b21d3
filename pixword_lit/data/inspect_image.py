"""`pixword inspect`: exactly what the model sees for one image or one mixed document
(the worked example of spec section 5 comes out of this verbatim)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixword_lit.data.elements import RESAMPLE, build_sample, image_windows, resize_longer_side
from pixword_lit.errors import ConfigError, DataError
from pixword_lit.model.components.folding import UniformFolding
from pixword_lit.model.tokens import IGNORE, N_SPECIAL, Vocab


@dataclass
class Geometry:
    """How `pixword inspect` turns an image into windows (the config's model/data keys)."""

    image_size: int = 224
    window_size: int = 16
    fold: int = 16
    resample: str = "bicubic"
    max_seq_len: int = 1024


def _windows(path, g: Geometry, folding, vocab):
    from data_prep.imageio import load_rgb

    img = resize_longer_side(load_rgb(path), g.image_size, "upscale", g.resample)
    return image_windows(np.asarray(img), g.image_size, g.window_size, folding, vocab)


def inspect_path(path: str | Path, g: Geometry, tokenizer: str | None = None,
                 images: str | None = None) -> dict:
    """The sample built from one image, or one mixed-format .txt document whose image
    references resolve under `images`, as the JSON fields `describe` gives."""
    from data_prep.errors import BadInput, UsageError

    try:
        return _inspect(Path(path), g, tokenizer, images)
    except (BadInput, UsageError) as e:  # missing, unreadable, not an image or document: one line naming it
        raise DataError(str(e)) from None


def _inspect(path: Path, g: Geometry, tokenizer: str | None, images: str | None) -> dict:
    if g.image_size % g.window_size:
        raise ConfigError(f"--window-size {g.window_size} does not divide --image-size {g.image_size}")
    if g.fold not in {2**k for k in range(8)}:
        raise ConfigError(f"--fold: the uniform fold factor must be a power of two in 1..128, got {g.fold}")
    if g.resample not in RESAMPLE:
        raise ConfigError(f"--resample: unknown filter {g.resample!r}; one of {', '.join(RESAMPLE)}")
    folding = UniformFolding(g.fold)
    tok = None
    if tokenizer:
        from data_prep.tokenizer import load_checked_tokenizer

        tok = load_checked_tokenizer(tokenizer)
    vocab = Vocab(tok.get_vocab_size() if tok else N_SPECIAL, folding.n_pix)
    if path.suffix.lower() != ".txt":
        w = _windows(path, g, folding, vocab)
        return describe(build_sample([w], vocab, g.max_seq_len))
    from data_prep.documents import parse_document, read_document, resolve_image

    elements, shown = [], []
    for el in parse_document(read_document(path), str(path)):
        if el["type"] == "text":
            if tok is None:
                raise ConfigError("--tokenizer: a document with text needs a tokenizer.json")
            elements.append(np.array(tok.encode(el["text"], add_special_tokens=False).ids))
            shown.append({"type": "text", "text": el["text"]})
        else:
            if not images and not Path(el["name"]).is_absolute():
                raise ConfigError(f"--images: {path} references {el['name']!r}; give its folder")
            w = _windows(resolve_image(el["name"], images or "/"), g, folding, vocab)
            elements.append(w)
            shown.append({"type": "image", "name": el["name"], "windows": len(w.pix)})
    return {"elements": shown, **describe(build_sample(elements, vocab, g.max_seq_len))}


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
