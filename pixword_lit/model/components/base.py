"""What every component family shares: the params of a component that takes none."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NoParams:
    """The `Params` of a component with no parameters of its own."""
