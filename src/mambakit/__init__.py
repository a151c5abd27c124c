"""mambakit: Mamba and the state-space models behind it."""

from . import errors, ops
from .layers import MambaBlock, RMSNorm
from .models import InferenceCache, MambaConfig, MambaLMHeadModel
from .ops import selective_scan, selective_scan_ref, selective_state_update

__version__ = "0.1.0"

__all__ = ["errors", "ops", "selective_scan", "selective_scan_ref", "selective_state_update", "__version__"]
__all__ += ["MambaBlock", "RMSNorm", "InferenceCache", "MambaConfig", "MambaLMHeadModel"]
