"""Language models: configuration, the Mamba LM, generation and checkpoints.

Import order (each module imports only those before it): layer_types, config, mixers, formats
(state_spaces, hf, the hybrid families), cache, checkpoint (files), pretrained, sampling, generation, lm.
"""

from ..errors import TokenIdError
from .cache import InferenceCache
from .config import MambaConfig
from .generation import generate, generate_tokens
from .lm import MambaLMHeadModel
from .mixers import available_mixers, register_mixer
from .sampling import SamplingOptions, sample_next_token

__all__ = [
    "InferenceCache",
    "MambaConfig",
    "MambaLMHeadModel",
    "SamplingOptions",
    "TokenIdError",
    "available_mixers",
    "generate",
    "generate_tokens",
    "register_mixer",
    "sample_next_token",
]
