"""Language models: configuration, the Mamba LM, generation and checkpoints."""

from .config import MambaConfig
from .generation import generate, generate_tokens, sample_next_token
from .lm import MambaLMHeadModel, TokenIdError
from .mixers import available_mixers, register_mixer

__all__ = [
    "MambaConfig",
    "MambaLMHeadModel",
    "TokenIdError",
    "available_mixers",
    "generate",
    "generate_tokens",
    "register_mixer",
    "sample_next_token",
]
