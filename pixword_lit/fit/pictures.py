"""The validation picture: what the model learned, for a person to look at.

For a few validation images, three panels side by side: the folded image as the model sees
it (unfolded to display colors), the true first-pixel color of every window (the targets),
and the model's predicted first-pixel color of every window. Pad is drawn mid-gray.
"""

from __future__ import annotations

import numpy as np

from pixword_lit.data.elements import Windows
from pixword_lit.infer.generate import Sampling
from pixword_lit.infer.images import generate_images, kept_windows, to_rgb
from pixword_lit.model.tokens import IMG_START

GRAY = np.array([128, 128, 128], np.uint8)


def _grid(per_window: np.ndarray, size: int, window: int) -> np.ndarray:
    """(N, P, 3) window-major pixels -> (S, S, 3) image."""
    g = size // window
    return per_window.reshape(g, g, window, window, 3).transpose(0, 2, 1, 3, 4).reshape(size, size, 3)


def prediction_picture(batch, logits, vocab, folding, mcfg, max_images: int):
    """-> (H, W, 3) uint8 picture, or None when the batch holds no image."""
    size, window = mcfg.image_size, mcfg.window_size
    n_win = (size // window) ** 2
    colors = np.concatenate([folding.colors(), GRAY[None]])  # pad id -> gray
    targets = batch["targets"].cpu()
    pred = logits[..., vocab.n_words :].argmax(-1).cpu()  # best pix token at every position
    rows = []
    for i in range(targets.shape[0]):
        if len(rows) == max_images or not bool(batch["window_valid"][i, :n_win].any()):
            continue
        pix = batch["pix"][i, :n_win].cpu().numpy()  # first image of the sample: (N, P)
        valid = batch["window_valid"][i, :n_win].cpu().numpy()
        # each valid window is the target of exactly one input, in window order
        is_pix = (targets[i] >= vocab.n_words).numpy()
        pred_first = pred[i].numpy()[is_pix][: int(valid.sum())]
        true_first = pix[valid, 0]
        panel_true = np.repeat(GRAY[None], n_win, 0)
        panel_pred = np.repeat(GRAY[None], n_win, 0)
        panel_true[np.flatnonzero(valid)] = colors[true_first]
        panel_pred[np.flatnonzero(valid)[: len(pred_first)]] = colors[pred_first]
        p = window * window
        folded = _grid(colors[pix], size, window)
        true_img = _grid(np.repeat(panel_true[:, None], p, 1), size, window)
        pred_img = _grid(np.repeat(panel_pred[:, None], p, 1), size, window)
        sep = np.full((size, 2, 3), 255, np.uint8)
        rows.append(np.concatenate([folded, sep, true_img, sep, pred_img], 1))
    if not rows:
        return None
    pic = np.concatenate([np.concatenate([r, np.full((2, r.shape[1], 3), 255, np.uint8)]) for r in rows])
    scale = max(1, 256 // size)  # small images are enlarged (nearest) to stay visible
    return np.ascontiguousarray(pic.repeat(scale, 0).repeat(scale, 1))


def completion_picture(batch, model, vocab, folding, mcfg, max_images: int, seed: int = 0):
    """Dense models: for a few validation images, the folded truth | the model's completion of
    its bottom half given the top half (whole window rows), after the sample's own text.
    -> (H, W, 3) uint8, or None when the batch holds no image."""
    size, window = mcfg.image_size, mcfg.window_size
    n_win = (size // window) ** 2
    rows = []
    for i in range(batch["pix"].shape[0]):
        if len(rows) == max_images or not bool(batch["window_valid"][i, :n_win].any()):
            continue
        ids = batch["input_ids"][i].cpu().numpy()
        starts = np.flatnonzero(ids == IMG_START)
        prompt = [ids[1 : starts[0]]] if len(starts) and starts[0] > 1 else []
        truth = Windows(batch["pix"][i, :n_win].cpu().numpy(), batch["pix_pos"][i, :n_win].cpu().numpy(),
                        batch["summary_index"][i, :n_win].cpu().numpy(),
                        batch["window_valid"][i, :n_win].cpu().numpy(), 0.0, 0)
        keep = kept_windows(size, window, size // 2)
        (smp,) = generate_images(model, prompt, truth, vocab, 1, Sampling(temperature=1.0, seed=seed), keep)
        sep = np.full((size, 2, 3), 255, np.uint8)
        rows.append(np.concatenate([to_rgb(truth.pix, folding, size, window), sep,
                                    to_rgb(smp.pix, folding, size, window)], 1))
    if not rows:
        return None
    pic = np.concatenate([np.concatenate([r, np.full((2, r.shape[1], 3), 255, np.uint8)]) for r in rows])
    scale = max(1, 256 // size)
    return np.ascontiguousarray(pic.repeat(scale, 0).repeat(scale, 1))
