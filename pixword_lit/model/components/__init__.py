"""Component registries, one per family, each a plain dict at the bottom of its module.

`validate_components` checks a config's `model.folding / attention / embedding` mappings
against the registries (names and params) and the combinations that make no sense, before
any data is read. Every other combination works. The ones refused, and why:

- embedding `factorized` needs folding `uniform` (a palette has no per-channel levels);
- embedding `patch_linear` needs attention `global_conditional` (it makes one vector per
  window, so there are no per-pixel tokens to pool over or to attend to exactly);
- attention `full_causal` needs image_size^2 <= its `max_pixels` (exact attention is
  quadratic in the pixels of an image);
- objective `dense` needs a per-pixel embedding (the local decoder reads the previous pixels
  of the window, which `patch_linear` never embeds one by one).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from pixword_lit.errors import ConfigError
from pixword_lit.model.components.attention import ATTENTIONS
from pixword_lit.model.components.embedding import EMBEDDINGS
from pixword_lit.model.components.folding import FOLDINGS
from pixword_lit.model.components.objective import OBJECTIVES

REGISTRIES = {"folding": FOLDINGS, "attention": ATTENTIONS, "embedding": EMBEDDINGS,
              "objective": OBJECTIVES}


def component_params(family: str, spec) -> tuple[str, Any]:
    """(name, params) of a `{name: ..., <params>}` mapping: params is the component's own
    `Params` dataclass, filled with its defaults where the mapping leaves them out."""
    key = f"model.{family}"
    registry = REGISTRIES[family]
    spec = dict(spec or {})
    name = spec.pop("name", None)
    if name not in registry:
        raise ConfigError(
            f"{key}.name: unknown {family} {name!r}; valid names: {', '.join(sorted(registry))}"
        )
    allowed = {f.name for f in fields(registry[name].Params)}
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        valid = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(f"{key}.{unknown[0]}: not a parameter of {family} {name!r} (valid: {valid})")
    return name, registry[name].Params(**spec)


def validate_components(cfg) -> None:
    fold, fp = component_params("folding", cfg.model.folding)
    attn, ap = component_params("attention", cfg.model.attention)
    emb, _ = component_params("embedding", cfg.model.embedding)
    obj, op = component_params("objective", cfg.model.objective)
    if obj == "dense" and emb == "patch_linear":
        raise ConfigError(
            "model.objective.name: 'dense' predicts every pixel from the previous ones, which "
            "needs per-pixel embeddings; embedding 'patch_linear' embeds whole windows only"
        )
    if obj == "dense" and op.local_layers < 1:
        raise ConfigError(f"model.objective.local_layers: must be >= 1, got {op.local_layers}")
    if obj == "dense" and op.local_dim is not None and op.local_dim % cfg.model.n_heads:
        raise ConfigError(f"model.objective.local_dim: {op.local_dim} is not divisible by "
                          f"model.n_heads {cfg.model.n_heads}")
    if fold == "uniform" and not (_is_power_of_two(fp.factor) and fp.factor <= 128):
        raise ConfigError(
            f"model.folding.factor: fold factor must be a power of two in 1..128, got {fp.factor}"
        )
    if fold == "palette" and not 2 <= fp.colors <= 65536:
        raise ConfigError(f"model.folding.colors: must be in 2..65536, got {fp.colors}")
    if emb == "factorized" and not FOLDINGS[fold].has_channel_levels:
        raise ConfigError(
            "model.embedding.name: 'factorized' needs per-channel levels, which folding "
            f"{fold!r} does not have; use pix_table or linear_rgb with a palette"
        )
    if emb == "patch_linear" and attn != "global_conditional":
        raise ConfigError(
            f"model.attention.name: {attn!r} needs per-pixel tokens, but embedding 'patch_linear' "
            "embeds whole windows; use attention global_conditional with patch_linear"
        )
    if attn == "full_causal" and cfg.model.image_size**2 > ap.max_pixels:
        raise ConfigError(
            f"model.attention.max_pixels: full_causal attends over every pixel token, and "
            f"image_size {cfg.model.image_size} gives {cfg.model.image_size**2} per image "
            f"(limit {ap.max_pixels}); use a smaller model.image_size or raise the limit"
        )


def _is_power_of_two(x: int) -> bool:
    return x >= 1 and 2 ** int(round(math.log2(x))) == x
