"""Sequence-mixing layers, each mapping (batch, L, d_model) -> same, with a step() for generation."""

from .lru import LRU
from .mamba import MambaBlock
from .norm import RMSNorm
from .s4 import S4
from .s4d import S4D

__all__ = ["LRU", "MambaBlock", "RMSNorm", "S4", "S4D"]
