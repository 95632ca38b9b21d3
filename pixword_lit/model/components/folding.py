"""Color folding schemes (spec section 2 and 8): 8-bit RGB pixels -> pix token ids.

A folding maps uint8 arrays (..., 3) to int64 ids in [0, n_pix) and back to display colors;
`state()` is what checkpoints keep and `FOLDINGS[name].from_state(state)` rebuilds it.
Both run in DataLoader workers on whole images at once (no per-pixel Python loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pixword_lit.errors import ConfigError


@dataclass
class UniformParams:
    factor: int = 16  # f: power of two in 1..128; L = 256 / f levels per channel


class UniformFolding:
    """The paper's scheme: v -> v // f per channel, t = r' + g'L + b'L^2."""

    Params = UniformParams
    has_channel_levels = True

    def __init__(self, factor: int = 16):
        self.factor = factor
        self.levels = 256 // factor
        self.n_pix = self.levels**3

    def fold(self, rgb: np.ndarray) -> np.ndarray:
        q = rgb.astype(np.int64) // self.factor  # (..., 3) levels
        return q[..., 0] + q[..., 1] * self.levels + q[..., 2] * self.levels**2

    def channel_levels(self) -> np.ndarray:
        """(n_pix, 3) per-channel level of every pix id."""
        t = np.arange(self.n_pix)
        L = self.levels
        return np.stack([t % L, (t // L) % L, t // (L * L)], axis=-1)

    def colors(self) -> np.ndarray:
        """(n_pix, 3) uint8 display color: the bin centre v' * f + f // 2."""
        return (self.channel_levels() * self.factor + self.factor // 2).astype(np.uint8)

    def unfold(self, ids: np.ndarray) -> np.ndarray:
        """(...) pix ids -> (..., 3) uint8 display colors."""
        return self.colors()[ids]

    def state(self) -> dict:
        return {"name": "uniform", "factor": self.factor}

    @classmethod
    def from_state(cls, state: dict) -> UniformFolding:
        return cls(state["factor"])


@dataclass
class PaletteParams:
    colors: int = 512  # K palette entries = pix vocabulary
    sample_pixels: int = 200_000  # pixels sampled from the training shards for k-means
    iters: int = 25  # Lloyd iterations


class PaletteFolding:
    """A learned palette of K colors (Image GPT style); a pixel becomes its nearest color."""

    Params = PaletteParams
    has_channel_levels = False  # palette colors are not a grid of per-channel levels

    def __init__(self, palette: np.ndarray):
        self.palette = np.asarray(palette, dtype=np.uint8)  # (K, 3)
        self.n_pix = len(self.palette)
        self._pal = self.palette.astype(np.float32)
        self._pal_sq = (self._pal**2).sum(-1)

    def fold(self, rgb: np.ndarray) -> np.ndarray:
        """(..., 3) uint8 -> (...) index of the nearest palette color (squared RGB distance)."""
        return nearest(rgb.reshape(-1, 3), self._pal, self._pal_sq).reshape(rgb.shape[:-1])

    def colors(self) -> np.ndarray:
        return self.palette

    def unfold(self, ids: np.ndarray) -> np.ndarray:
        return self.palette[ids]

    def state(self) -> dict:
        return {"name": "palette", "palette": self.palette.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> PaletteFolding:
        return cls(state["palette"])


def nearest(x: np.ndarray, centers: np.ndarray, centers_sq: np.ndarray | None = None,
            chunk: int = 16384) -> np.ndarray:
    """(N, 3) points -> (N,) index of the nearest of (K, 3) centers, vectorized in chunks that
    bound the (chunk, K) distance matrix (K = 512: 32 MB per chunk)."""
    c = centers.astype(np.float32)
    c_sq = (c**2).sum(-1) if centers_sq is None else centers_sq
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), chunk):
        xs = x[start : start + chunk].astype(np.float32)
        d = c_sq[None, :] - 2.0 * xs @ c.T  # |x|^2 is the same for every center of a row
        out[start : start + chunk] = d.argmin(1)
    return out


def fit_palette(pixels: np.ndarray, k: int, iters: int = 25, seed: int = 0) -> np.ndarray:
    """k-means (k-means++ init, Lloyd steps) on (N, 3) uint8 pixels -> (k, 3) uint8 palette."""
    rng = np.random.default_rng(seed)
    x = pixels.reshape(-1, 3).astype(np.float32)
    if len(x) < k:
        raise ValueError(f"palette of {k} colors needs at least {k} sample pixels, got {len(x)}")
    centers = np.empty((k, 3), np.float32)
    centers[0] = x[rng.integers(len(x))]
    d2 = ((x - centers[0]) ** 2).sum(-1)
    for i in range(1, k):  # k-means++: sample proportional to squared distance
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centers[i] = x[rng.choice(len(x), p=p)]
        d2 = np.minimum(d2, ((x - centers[i]) ** 2).sum(-1))
    for _ in range(iters):
        assign = nearest(x, centers)
        counts = np.bincount(assign, minlength=k)
        sums = np.stack([np.bincount(assign, x[:, c], minlength=k) for c in range(3)], 1)
        moved = counts > 0  # empty clusters keep their centre
        centers[moved] = (sums[moved] / counts[moved, None]).astype(np.float32)
    pal = np.clip(np.rint(centers), 0, 255).astype(np.uint8)
    return pal[np.lexsort(pal.T[::-1])]  # sorted so ids are stable for a given palette


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of 8-bit images with mean squared error `mse`."""
    return float("inf") if mse <= 0 else float(10 * np.log10(255.0**2 / mse))


def fold_psnr(folding, rgb: np.ndarray) -> float:
    """PSNR of unfold(fold(rgb)) against rgb: what folding alone loses, before any training."""
    err = folding.unfold(folding.fold(rgb)).astype(np.float64) - rgb.astype(np.float64)
    return psnr(float((err**2).mean()))


FOLDINGS = {"uniform": UniformFolding, "palette": PaletteFolding}


def folding_from_state(state: dict):
    """A folding from its `state()` (the form checkpoints and run folders keep)."""
    if state["name"] not in FOLDINGS:
        raise ConfigError(f"model.folding.name: unknown folding {state['name']!r}")
    return FOLDINGS[state["name"]].from_state(state)
