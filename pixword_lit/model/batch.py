"""The model's input: one batch of right-padded samples, every key with its shape and meaning.

Built by `elements.build_sample` (one sample, numpy) and `elements.collate` (padded torch batch);
read by `pixword.PixWordModel` and the attention variants (`components/attention.py`).
B samples, T element slots (the longest sample), Nw window slots (the most windows of a
sample), P = window_size^2 pixels per window, in window-major order (spec sections 3, 5).

An *element* is one word token, one `<|image|>` / `<|/image|>` marker or one window. A window
element's input id is 0 (a placeholder); its vector comes from the image block's summary of
pix[b, window_slot[b, t]]. A masked window (no valid pixel) keeps its slot but takes no
position and is no target; padding slots are invalid in every tensor.
"""

from typing import TypedDict

import torch


class Batch(TypedDict):
    # ---- the element sequence, (B, T) ---------------------------------------------------
    input_ids: torch.Tensor  # (B, T) int64 word id of each element; 0 at windows, PAD at padding
    window_slot: torch.Tensor  # (B, T) int64 index into pix's Nw axis of a window element, -1 else
    elem_valid: torch.Tensor  # (B, T) bool: a real, unmasked element (False: padding, masked window)
    positions: torch.Tensor  # (B, T) int64 decoder RoPE position of each valid element, -1 else
    targets: torch.Tensor  # (B, T) int64 class of the next valid element (word id, or n_words +
    #                        its first pixel for a window), IGNORE (-100) where nothing is scored
    # ---- the windows, (B, Nw, P) --------------------------------------------------------
    pix: torch.Tensor  # (B, Nw, P) int64 pix ids of each window's pixels; pix pad id at pad pixels
    pix_pos: torch.Tensor  # (B, Nw, P) int64 image-block RoPE position of each pixel, -1 at pads
    summary_index: torch.Tensor  # (B, Nw) int64 index in P of each window's last valid pixel
    window_valid: torch.Tensor  # (B, Nw) bool: the window has a valid pixel (False: masked, padding)
    # ---- per sample, for metrics -------------------------------------------------------
    fold_se: torch.Tensor  # (B,) float64 squared error of unfold(fold(image)) (folding PSNR)
    n_pixels: torch.Tensor  # (B,) int64 valid pixels of the sample's images
    truncated: torch.Tensor  # (B,) bool: the sample was cut at max_seq_len


class StreamBatch(Batch):
    """A batch as the training/validation stream (`stream.ShardStream`) yields it."""

    n_skipped: torch.Tensor  # () int64 units of this batch dropped (unreadable, small_images: skip)
    n_units: torch.Tensor  # () int64 units of the data order this batch read (0 for a placeholder)
    batch_index: torch.Tensor  # () int64 index of this batch in its rank's epoch
