"""The inference cache: every layer's state after a prefix, as a value you can keep, copy, fork and store.

A recurrent model's whole memory of a prefix is this small object (for Mamba, a conv window and an SSM state
per layer; an attention layer adds its key/value cache), so whatever needs to go back to an earlier point
works on it directly:

- chunked prefill: ``model(chunk, state=cache)`` chunk after chunk equals one forward over the whole prompt;
- prefix caching: prefill a shared prompt once, then ``cache.clone()`` per request;
- beam search: ``cache.reorder(parents)`` after each step keeps each beam's state with its tokens;
- speculative decoding: ``saved = cache.clone()`` before the draft, ``cache.copy_(saved)`` to roll back;
- serving many requests: one cache of ``slots`` rows, ``cache.select(rows)`` to run some of them and
  ``cache.copy_(sub, rows)`` to write them back;
- storage: ``cache.save(path)`` (safetensors) and ``InferenceCache.load(path)``.

Each layer's state is a dict of tensors. Tensors with at least one dimension have the batch first; a 0-dim
tensor (an attention layer's ``length``) is shared by the rows and copied as is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_path
from ..errors import CheckpointError, ConfigError, ShapeError

_FORMAT = "mambakit.inference_cache/1"

LayerState = dict[str, torch.Tensor]


def _rows_index(rows: torch.Tensor | Sequence[int], batch: int, device: torch.device) -> torch.Tensor:
    """``rows`` as a long tensor of row numbers in [0, batch), checked."""
    if isinstance(rows, torch.Tensor):
        if rows.dtype == torch.bool or rows.is_floating_point() or rows.is_complex() or rows.dim() != 1:
            raise ConfigError(f"rows: expected a 1-D integer tensor or a sequence of ints, got a "
                              f"{rows.dim()}-D {rows.dtype} tensor")
        index = rows.to(device=device, dtype=torch.long)
    else:
        if isinstance(rows, (str, bytes)) or not all(isinstance(r, int) and not isinstance(r, bool)
                                                     for r in rows):
            raise ConfigError(f"rows: expected a 1-D integer tensor or a sequence of ints, got {rows!r}")
        index = torch.tensor(list(rows), dtype=torch.long, device=device)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= batch):
        raise ConfigError(f"rows: expected row numbers in [0, {batch}), got {index.tolist()}")
    return index


class InferenceCache:
    """The per-layer states of a model for a batch of sequences (see the module docstring for its uses).

    ``cache[i]`` is layer i's state dict (what that layer's ``step`` and ``forward(state=...)`` update in
    place); ``len(cache)`` is the number of layers; ``cache.batch_size`` the number of rows.
    """

    def __init__(self, layers: Sequence[LayerState]) -> None:
        if not isinstance(layers, Sequence) or not all(isinstance(s, dict) for s in layers):
            raise ConfigError("layers: expected a sequence of per-layer state dicts (name -> tensor)")
        batches = {t.shape[0] for s in layers for t in s.values() if isinstance(t, torch.Tensor) and t.dim()}
        if len(batches) > 1:
            raise ShapeError(f"layers: every state tensor must have the same batch size, "
                             f"got {sorted(batches)}")
        for i, s in enumerate(layers):
            for name, t in s.items():
                if not isinstance(t, torch.Tensor):
                    raise ConfigError(f"layers[{i}][{name!r}]: expected a tensor, got {type(t).__name__}")
        self.layers: list[LayerState] = list(layers)
        self.batch_size: int = batches.pop() if batches else 0

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer: int) -> LayerState:
        return self.layers[layer]

    def __iter__(self) -> Iterator[LayerState]:
        return iter(self.layers)

    def __repr__(self) -> str:
        return f"InferenceCache(layers={len(self)}, batch_size={self.batch_size}, bytes={self.nbytes})"

    @property
    def nbytes(self) -> int:
        """Memory held by the states, in bytes."""
        return sum(t.numel() * t.element_size() for s in self.layers for t in s.values())

    def _map(self, fn) -> InferenceCache:
        return InferenceCache([{k: fn(t) for k, t in s.items()} for s in self.layers])

    # ------------------------------------------------------------------------------------ copies and rows
    def clone(self) -> InferenceCache:
        """An independent copy: advancing one never changes the other."""
        return self._map(torch.clone)

    def select(self, rows: torch.Tensor | Sequence[int]) -> InferenceCache:
        """A new cache of the given rows, in that order (rows may repeat: fork one prompt into beams)."""
        index = _rows_index(rows, self.batch_size, self._device())
        return self._map(lambda t: t.index_select(0, index) if t.dim() else t.clone())

    def reorder(self, rows: torch.Tensor | Sequence[int]) -> None:
        """In place, row r becomes old row ``rows[r]`` (beam search after choosing each beam's parent);
        ``len(rows)`` must equal the batch size."""
        index = _rows_index(rows, self.batch_size, self._device())
        if index.numel() != self.batch_size:
            raise ConfigError(f"rows: reorder keeps the batch size {self.batch_size}, "
                              f"got {index.numel()} rows (use select() for a cache of another size)")
        for s in self.layers:
            for t in s.values():
                if t.dim():
                    t.copy_(t.index_select(0, index))

    def copy_(self, other: InferenceCache, rows: torch.Tensor | Sequence[int] | None = None) -> None:
        """In place: overwrite this cache with ``other`` (same shapes), or, with ``rows``, write other's
        row j into row ``rows[j]`` (put a prefilled request into its slot of a larger pool)."""
        if not isinstance(other, InferenceCache) or len(other) != len(self):
            raise ConfigError(f"other: expected an InferenceCache of {len(self)} layers, got "
                              f"{other!r}")
        index = None if rows is None else _rows_index(rows, self.batch_size, self._device())
        expected = self.batch_size if index is None else index.numel()
        if other.batch_size != expected:
            raise ShapeError(f"other: expected {expected} rows, got {other.batch_size}")
        for i, (mine, theirs) in enumerate(zip(self.layers, other.layers, strict=True)):
            if mine.keys() != theirs.keys():
                raise ConfigError(f"other[{i}]: expected the state names {sorted(mine)}, "
                                  f"got {sorted(theirs)}")
            for name, t in mine.items():
                src = theirs[name]
                if t.shape[1:] != src.shape[1:] or t.dim() != src.dim():
                    raise ShapeError(f"other[{i}][{name!r}]: expected shape (rows, *{tuple(t.shape[1:])}), "
                                     f"got {tuple(src.shape)}")
                if not t.dim() or index is None:
                    t.copy_(src)
                else:
                    t.index_copy_(0, index, src.to(t.dtype))

    @staticmethod
    def concat(caches: Sequence[InferenceCache]) -> InferenceCache:
        """The rows of several caches of the same model, one after another."""
        if not caches:
            raise ConfigError("caches: expected at least one InferenceCache")
        first = caches[0]
        layers = []
        for i in range(len(first)):
            layer = {}
            for name, t in first[i].items():
                parts = [c[i][name] for c in caches]
                if t.dim():
                    layer[name] = torch.cat(parts, dim=0)
                elif all(torch.equal(p, t) for p in parts):
                    layer[name] = t.clone()
                else:
                    raise ConfigError(f"caches: layer {i} {name!r} differs between the caches "
                                      f"({[p.item() for p in parts]}); only equal ones can be joined")
            layers.append(layer)
        return InferenceCache(layers)

    def to(self, device=None, dtype=None) -> InferenceCache:
        """A copy on ``device``; ``dtype`` converts the floating-point states (integer counters stay)."""
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None,
                                        copy=True))

    def _device(self) -> torch.device:
        for s in self.layers:
            for t in s.values():
                return t.device
        return torch.device("cpu")

    # ------------------------------------------------------------------------------------------ storage
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{"layers.{i}.{name}": tensor}`` (contiguous copies)."""
        return {f"layers.{i}.{k}": t.detach().contiguous().clone()
                for i, s in enumerate(self.layers) for k, t in s.items()}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], n_layers: int | None = None) -> InferenceCache:
        """The inverse of :meth:`state_dict`."""
        per_layer: dict[int, LayerState] = {}
        for key, t in tensors.items():
            parts = key.split(".", 2)
            if len(parts) != 3 or parts[0] != "layers" or not parts[1].isdigit():
                raise CheckpointError(f"cache: unexpected tensor name {key!r} (expected 'layers.<i>.<name>')")
            per_layer.setdefault(int(parts[1]), {})[parts[2]] = t
        count = n_layers if n_layers is not None else (max(per_layer) + 1 if per_layer else 0)
        missing = [i for i in range(count) if i not in per_layer]
        if missing or any(i >= count for i in per_layer):
            raise CheckpointError(f"cache: expected layers 0..{count - 1}, got {sorted(per_layer)}")
        return cls([per_layer[i] for i in range(count)])

    def save(self, path: str | os.PathLike) -> None:
        """Write the cache to a safetensors file, atomically."""
        with atomic_path(path) as tmp:
            save_file(self.state_dict(), str(tmp), metadata={"format": _FORMAT, "layers": str(len(self))})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> InferenceCache:
        """Read a cache written by :meth:`save` (safetensors: no code is unpickled)."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"cache: cannot read {os.fspath(path)!r} as safetensors: {e}") from e
        if metadata.get("format") != _FORMAT:
            raise CheckpointError(f"cache: {os.fspath(path)!r} is not an InferenceCache file "
                                  f"(format {metadata.get('format')!r}, expected {_FORMAT!r})")
        return cls.from_state_dict(load_file(str(path), device=str(device)), int(metadata["layers"]))
