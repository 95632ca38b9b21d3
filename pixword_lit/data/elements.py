"""What the model sees (spec sections 3 and 5), as vectorized numpy on whole images.

resize -> fold -> pad -> window-major order, masks, RoPE positions, summary indices; then
the element sequence `<s> ... <|image|> W0 .. Wn <|/image|> ... </s>`, its next-element
targets and decoder positions. No Python loop runs per pixel or per window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pixword_lit.model.batch import Batch
from pixword_lit.model.tokens import BOS, EOS, IGNORE, IMG_END, IMG_START, PAD, Vocab

# the resize filters `data.resample` names (PIL's)
RESAMPLE = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    # PIL's bilinear resize is always antialiased (a triangle filter whose support grows with
    # the downscale factor); torchvision's Resize on a PIL image calls exactly this (the
    # authors' loader), which the name says; on tensors torchvision needs antialias=True
    "bilinear_antialias": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
}


class SkipImage(Exception):
    """The image is not used under this config (e.g. small_images: skip)."""


def resize_longer_side(img: Image.Image, size: int, small_images: str, resample: str,
                       rounding: str = "floor") -> Image.Image:
    """Longer side -> S keeping aspect; short side int(S * short / long) (spec section 3).

    rounding `authors`: int((short / long) * S) as the authors' loader (dataset.py
    read_image); the rounded ratio times S can fall just below an integer, 1 px shorter.
    """
    w, h = img.size
    if max(w, h) < size and small_images == "skip":  # the authors' loader skips these
        raise SkipImage(f"{w}x{h} is smaller than image_size {size}")
    long, short = max(w, h), min(w, h)
    side = int(short / long * size) if rounding == "authors" else int(size * short / long)
    new = (size, max(1, side)) if w >= h else (max(1, side), size)
    if new == (w, h):
        return img
    return img.resize(new, RESAMPLE[resample])


@dataclass
class Windows:
    """One image in window-major order. N = (S/w)^2 windows of P = w*w pixels."""

    pix: np.ndarray  # (N, P) int64 pix ids, pad id for pad pixels
    pos: np.ndarray  # (N, P) int64 global RoPE position of each pixel, -1 for pad
    summary_index: np.ndarray  # (N,) position of the last valid pixel inside each window
    valid: np.ndarray  # (N,) bool: window has at least one valid pixel
    fold_se: float  # squared error of unfold(fold(x)) vs x over valid pixels (folding PSNR)
    n_pixels: int  # valid pixels


def image_windows(rgb: np.ndarray, size: int, window: int, folding, vocab: Vocab) -> Windows:
    """(h, w, 3) uint8 with max(h, w) == size -> Windows. Pad rows bottom, pad columns right."""
    h, w = rgb.shape[:2]
    ids = np.full((size, size), vocab.pix_pad, dtype=np.int64)
    folded = folding.fold(rgb)  # (h, w)
    ids[:h, :w] = folded
    valid = np.zeros((size, size), dtype=bool)
    valid[:h, :w] = True
    g = size // window

    def window_major(a):  # (S, S) -> (N, P): windows row-major, pixels row-major inside
        return a.reshape(g, window, g, window).transpose(0, 2, 1, 3).reshape(g * g, window * window)

    pix, vpix = window_major(ids), window_major(valid)
    pos = np.where(vpix, np.cumsum(vpix.reshape(-1)).reshape(vpix.shape) - 1, -1)
    p = window * window
    summary_index = p - 1 - np.argmax(vpix[:, ::-1], axis=1)  # last valid pixel per window
    recon = folding.colors()[folded].astype(np.float64)
    fold_se = float(((recon - rgb.astype(np.float64)) ** 2).sum())
    return Windows(pix, pos, summary_index, vpix.any(1), fold_se, h * w)


def build_sample(elements: list, vocab: Vocab, max_seq_len: int) -> dict:
    """Elements (`np.ndarray` word ids or `Windows`) -> one sample's arrays.

    The sequence is `<s> elements </s>`; inputs are all but its last element and each input
    predicts the next *unmasked* element's target (spec section 5). A sample longer than
    max_seq_len inputs is cut at an element boundary (text may be cut, an image never is).
    """
    ids, slots, valid, cls, windows = [np.array([BOS])], [np.array([-1])], [np.array([True])], [
        np.array([BOS])
    ], []
    length, truncated = 1, False
    for el in elements:
        room = max_seq_len - length  # keep one slot for </s>
        if isinstance(el, Windows):
            n = len(el.pix) + 2
            if n > room:
                truncated = True
                break
            k = len(windows)
            windows.append(el)
            first = np.where(el.valid, vocab.pix_class(el.pix[:, 0]), IGNORE)
            ids.append(np.r_[IMG_START, np.zeros(len(el.pix), np.int64), IMG_END])
            slots.append(np.r_[-1, np.arange(len(el.pix)) + k * len(el.pix), -1])
            valid.append(np.r_[True, el.valid, True])
            cls.append(np.r_[IMG_START, first, IMG_END])
        else:
            el = np.asarray(el, dtype=np.int64)
            if len(el) > room:
                el, truncated = el[: max(room, 0)], True
            ids.append(el)
            slots.append(np.full(len(el), -1))
            valid.append(np.ones(len(el), bool))
            cls.append(el)
            n = len(el)
            if truncated:
                length += n
                break
        length += n
    ids, slots = np.concatenate(ids + [[EOS]]), np.concatenate(slots + [[-1]])
    valid, cls = np.concatenate(valid + [[True]]), np.concatenate(cls + [[EOS]])
    # next valid element strictly after i: reverse running minimum of valid indices
    n = len(ids)
    cand = np.where(valid, np.arange(n), n)
    nxt = np.minimum.accumulate(cand[::-1])[::-1]
    nxt = np.r_[nxt[1:], n][: n - 1]
    targets = np.where(valid[:-1] & (nxt < n), cls[np.minimum(nxt, n - 1)], IGNORE)
    positions = np.where(valid[:-1], np.cumsum(valid[:-1]) - 1, -1)
    p = windows[0].pix.shape[1] if windows else 0
    return {
        "input_ids": ids[:-1],
        "window_slot": slots[:-1],
        "elem_valid": valid[:-1],
        "positions": positions,
        "targets": targets,
        "pix": _concat(windows, "pix", np.zeros((0, p), np.int64)),
        "pix_pos": _concat(windows, "pos", np.zeros((0, p), np.int64)),
        "summary_index": _concat(windows, "summary_index", np.zeros(0, np.int64)),
        "window_valid": _concat(windows, "valid", np.zeros(0, bool)),
        "fold_se": sum(w.fold_se for w in windows),
        "n_pixels": sum(w.n_pixels for w in windows),
        "truncated": truncated,
    }


def _concat(windows: list, attr: str, empty: np.ndarray) -> np.ndarray:
    return np.concatenate([getattr(w, attr) for w in windows]) if windows else empty


def empty_sample() -> dict:
    """A placeholder that scores nothing: keeps batch counts equal across ranks (see data/stream.py)."""
    return {
        "input_ids": np.array([BOS]),
        "window_slot": np.array([-1]),
        "elem_valid": np.array([False]),
        "positions": np.array([-1]),
        "targets": np.array([IGNORE]),
        "pix": np.zeros((0, 0), np.int64),
        "pix_pos": np.zeros((0, 0), np.int64),
        "summary_index": np.zeros((0,), np.int64),
        "window_valid": np.zeros((0,), bool),
        "fold_se": 0.0,
        "n_pixels": 0,
        "truncated": False,
    }


def collate(samples: list[dict], pix_pad: int, pixels_per_window: int) -> Batch:
    """Pad samples to the batch's longest sequence and window count -> torch tensors (every
    key's shape and meaning: `pixword_lit.model.batch.Batch`)."""
    b = len(samples)
    t = max(len(s["input_ids"]) for s in samples)
    nw = max(max(len(s["window_valid"]) for s in samples), 1)
    p = pixels_per_window
    out = {
        "input_ids": np.full((b, t), PAD, np.int64),
        "window_slot": np.full((b, t), -1, np.int64),
        "elem_valid": np.zeros((b, t), bool),
        "positions": np.full((b, t), -1, np.int64),
        "targets": np.full((b, t), IGNORE, np.int64),
        "pix": np.full((b, nw, p), pix_pad, np.int64),
        "pix_pos": np.full((b, nw, p), -1, np.int64),
        "summary_index": np.zeros((b, nw), np.int64),
        "window_valid": np.zeros((b, nw), bool),
    }
    for i, s in enumerate(samples):  # one copy per sample, not per window
        n = len(s["input_ids"])
        for k in ("input_ids", "window_slot", "elem_valid", "positions", "targets"):
            out[k][i, :n] = s[k]
        m = len(s["window_valid"])
        if m:
            out["pix"][i, :m] = s["pix"]
            out["pix_pos"][i, :m] = s["pix_pos"]
            out["summary_index"][i, :m] = s["summary_index"]
            out["window_valid"][i, :m] = s["window_valid"]
    batch: Batch = {k: torch.from_numpy(v) for k, v in out.items()}
    batch["fold_se"] = torch.tensor([s["fold_se"] for s in samples], dtype=torch.float64)
    batch["n_pixels"] = torch.tensor([s["n_pixels"] for s in samples], dtype=torch.int64)
    batch["truncated"] = torch.tensor([s["truncated"] for s in samples], dtype=torch.bool)
    return batch
