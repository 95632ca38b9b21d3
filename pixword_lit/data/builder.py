"""Raw shard samples -> model-ready sample arrays (`SampleBuilder`, run in DataLoader workers)."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from pixword_lit.data.elements import (
    SkipImage,
    build_sample,
    image_windows,
    resize_longer_side,
)
from pixword_lit.model.tokens import IMG_END, IMG_START, Vocab


class SampleBuilder:
    """Raw shard sample -> model-ready sample arrays (runs in DataLoader workers)."""

    def __init__(self, mcfg, dcfg, vocab: Vocab, folding, tokenizer=None):
        self.size, self.window = mcfg.image_size, mcfg.window_size
        self.mode, self.max_seq_len = dcfg.mode, dcfg.max_seq_len
        self.small_images, self.resample = dcfg.small_images, dcfg.resample
        self.rounding = dcfg.get("short_side_rounding", "floor")  # configs saved before it existed
        self.keep_skipped_tags = dcfg.get("skipped_image_tags", "drop") == "keep"
        self.vocab, self.folding, self.tokenizer = vocab, folding, tokenizer

    def rgb(self, data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data))
        img = img.convert("RGB")  # shards hold 8-bit RGB already; this only guards the type
        img = resize_longer_side(img, self.size, self.small_images, self.resample, self.rounding)
        return np.asarray(img, dtype=np.uint8)

    def windows(self, data: bytes):
        return image_windows(self.rgb(data), self.size, self.window, self.folding, self.vocab)

    def units(self, raw: dict) -> list[dict]:
        """Split a raw sample into the units of this mode (images, or the whole document)."""
        meta = json.loads(raw["json"])
        if self.mode == "image_only":
            return [{"image": raw[el["file"]]} for el in meta["elements"] if el["type"] == "image"]
        return [{"elements": meta["elements"], "raw": raw}]

    def build(self, unit: dict) -> dict:
        if "image" in unit:
            return build_sample([self.windows(unit["image"])], self.vocab, self.max_seq_len)
        elements = []
        for el in unit["elements"]:
            if el["type"] == "text":
                elements.append(np.array(self.tokenizer.encode(el["text"], add_special_tokens=False).ids))
            else:
                try:
                    elements.append(self.windows(unit["raw"][el["file"]]))
                except SkipImage:  # keep: the authors' text keeps the tags, scored as words
                    if self.keep_skipped_tags:
                        elements.append(np.array([IMG_START, IMG_END]))
        return build_sample(elements, self.vocab, self.max_seq_len)
