"""Finding what a run or checkpoint directory holds: the checkpoint, the model and its tokenizer."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, MambakitError


def checkpoint_directory(path: str) -> Path:
    """A run directory's latest checkpoint, or ``path`` itself (checkpoint, Hugging Face, state-spaces)."""
    from ..training import latest_checkpoint

    directory = Path(path)
    if not directory.exists():
        raise CheckpointError(f"checkpoint: expected a run or checkpoint directory, got {path!r} (not found)")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint: expected a directory, got a file {path!r}")
    found = latest_checkpoint(directory)
    if found is not None:
        return found
    if not (directory / "config.json").is_file():
        raise CheckpointError("checkpoint: expected a run directory (with 'latest') or a checkpoint "
                              f"directory (with config.json), got {path!r}")
    return directory


def load_model(path: str, device: str, weights: str = "fp32"):
    """The model of a run or checkpoint directory on ``device``, in eval mode, and the directory used;
    ``weights`` "bf16" or "int8" turns its large matrices into low-precision inference weights
    (:mod:`mambakit.models.quantize`)."""
    from ..models import MambaLMHeadModel
    from ..training.distributed import resolve_device

    directory = checkpoint_directory(path)
    target = resolve_device(device)
    try:
        model = MambaLMHeadModel.from_pretrained(directory)
    except MambakitError:
        raise
    except Exception as exc:  # anything else from a foreign or damaged directory becomes one line
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"checkpoint: cannot load {str(directory)!r} ({first})") from None
    from ..models.quantize import quantize_weights

    return quantize_weights(model.to(target).eval(), weights), directory


def load_tokenizer(directory: Path, spec: str | None, vocab_size: int):
    """``--tokenizer SPEC``, else the checkpoint's own tokenizer, else bytes for a vocabulary of <= 256."""
    from ..data import ByteTokenizer, TokenizerError, load_tokenizer, tokenizer_from_spec

    if spec is not None:
        tokenizer = tokenizer_from_spec(spec)
    elif (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(directory, default=ByteTokenizer() if vocab_size <= 256 else None)
    elif vocab_size <= 256:
        tokenizer = ByteTokenizer()
    else:
        raise TokenizerError(f"tokenizer: the checkpoint's vocabulary has {vocab_size} tokens and "
                             f"{str(directory)!r} holds no tokenizer.json; pass --tokenizer PATH")
    if tokenizer.vocab_size > vocab_size:
        raise TokenizerError(f"tokenizer: expected at most the model's {vocab_size} tokens, got a tokenizer "
                             f"with {tokenizer.vocab_size}")
    return tokenizer
