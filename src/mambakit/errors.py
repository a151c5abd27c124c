"""One exception family for mambakit.

Every error names the argument (or config key, or weight), what was expected and what was given.
Each class also derives from the matching builtin, so ``except ValueError`` keeps working.
"""


class MambakitError(Exception):
    """Base class of every error mambakit raises on purpose."""


class ShapeError(MambakitError, ValueError):
    """A tensor has the wrong rank or size."""


class DTypeError(MambakitError, TypeError):
    """A tensor has the wrong dtype (integer where floating point is needed, mixed precisions, ...)."""


class DeviceError(MambakitError, ValueError):
    """Tensors that must live together are on different devices."""


class ConfigError(MambakitError, ValueError):
    """A configuration value or key is missing, unknown or out of range."""


class CheckpointError(MambakitError, ValueError):
    """A checkpoint is missing, truncated, foreign, or its weights do not match the model."""


class TokenIdError(MambakitError, ValueError):
    """A token id is outside [0, vocab_size)."""


class DataError(MambakitError, ValueError):
    """Training data is missing, empty, unreadable, or too small."""


class CorpusError(MambakitError, ValueError):
    """The embedded corpus cannot be found or read."""


class TokenizerError(MambakitError, ValueError):
    """A tokenizer file is missing, unreadable or of an unknown kind."""
