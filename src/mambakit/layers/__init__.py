"""Sequence-mixing layers, each mapping (batch, L, d_model) -> same, with a step() for generation."""

from .attention import CausalSelfAttention
from .lowp_linear import LowPrecisionLinear
from .lru import LRU
from .mamba import MambaBlock
from .mamba2 import Mamba2Block
from .mamba_normed import MambaBlockNormedSSM
from .mlp import GatedMLP
from .moe import MoE
from .norm import RMSNorm, RMSNormGated
from .parallel_hybrid import ParallelAttentionMamba2
from .s4 import S4
from .s4d import S4D

__all__ = ["CausalSelfAttention", "GatedMLP", "LowPrecisionLinear", "LRU", "Mamba2Block", "MambaBlock",
           "MambaBlockNormedSSM", "MoE", "ParallelAttentionMamba2", "RMSNorm", "RMSNormGated", "S4", "S4D"]
