"""Sequence-mixing layers, each mapping (batch, L, d_model) -> same, with a step() for generation."""

from .attention import CausalSelfAttention
from .lru import LRU
from .mamba import MambaBlock
from .mamba2 import Mamba2Block
from .norm import RMSNorm, RMSNormGated
from .s4 import S4
from .s4d import S4D

__all__ = ["CausalSelfAttention", "LRU", "Mamba2Block", "MambaBlock", "RMSNorm", "RMSNormGated", "S4", "S4D"]
