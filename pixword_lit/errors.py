"""The errors pixword raises for bad input, each with a one-line message naming the key, file
or argument at fault; `pixword` prints it as `pixword CMD: error: ...` (exit 2), no traceback.
A leaf module (it imports nothing of pixword), so every layer may raise them."""

from __future__ import annotations


class PixwordError(ValueError):
    """Bad input that the user can fix; the message says what and where."""


class ConfigError(PixwordError):
    """An invalid config or argument; the message names the offending key."""


class DataError(PixwordError):
    """Unusable data settings; the message names the config key or file."""


class CheckpointError(PixwordError):
    """A checkpoint that cannot or may not be used; the message names the file and why."""


class GenerateError(PixwordError):
    """A prompt or request that cannot be generated from; the message says why."""
