"""mambakit: Mamba and the state-space models behind it."""

from . import errors, ops
from .layers import MambaBlock, RMSNorm
from .models import InferenceCache, MambaConfig, MambaLMHeadModel
from .ops import selective_scan, selective_scan_ref, selective_state_update

__version__ = "0.1.0"


def from_pretrained(path, device=None, dtype=None) -> MambaLMHeadModel:
    """The model of any checkpoint directory mambakit reads: state-spaces, transformers Mamba / Mamba-2,
    or a hybrid family (Bamba, Granite 4.0 hybrids, Nemotron-H, Jamba, Falcon-H1, Zamba2), chosen from
    its config.json; a :class:`~mambakit.MambaLMHeadModel` whose ``save_pretrained(path, format="hf")`` writes
    the same family."""
    return MambaLMHeadModel.from_pretrained(path, device=device, dtype=dtype)

__all__ = ["errors", "ops", "selective_scan", "selective_scan_ref", "selective_state_update", "__version__"]
__all__ += ["MambaBlock", "RMSNorm", "InferenceCache", "MambaConfig", "MambaLMHeadModel", "from_pretrained"]
