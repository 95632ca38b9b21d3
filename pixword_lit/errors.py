"""Errors every layer may raise, in a leaf module that imports nothing of pixword, so the
imports run one way (config -> components -> model -> lit_module -> build -> train -> cli)."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid config; the message names the offending key."""
