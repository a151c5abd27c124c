"""Multi-query associative recall, MQAR (Arora et al., "Zoology: Measuring and Improving Recall in Efficient
Language Models", 2023): read several key-value pairs, then answer several queries about them.

One sequence of length ``seq_len``::

    k1 v1 k2 v2 ... kn vn   then BLANKs, with num_queries of the keys placed again at random positions

At each query position the model must output the value that was paired with that key. Keys in a sequence are
distinct and each is queried at most once (in random order); values may repeat.

Token ids: BLANK = 0, keys 1 .. K, values K + 1 .. vocab_size - 1, where K = (vocab_size - 1) // 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_int
from ..errors import ConfigError
from .batch import IGNORE_INDEX, TaskBatch, make_generator, random_positions

BLANK = 0


@dataclass(frozen=True)
class MQAR:
    """A multi-query associative-recall task; :meth:`sample` draws batches.

    Args:
        seq_len: total sequence length; at least 2 * num_pairs + num_queries.
        num_pairs: key-value pairs at the start of the sequence; at most the number of key tokens.
        num_queries: keys asked again later (default: all of them); at most num_pairs.
        vocab_size: all token ids, BLANK included; at least 3 (one key and one value token).
    """

    seq_len: int = 256
    num_pairs: int = 16
    num_queries: int | None = None
    vocab_size: int = 8192

    def __post_init__(self) -> None:
        check_int("seq_len", self.seq_len, 3)
        check_int("num_pairs", self.num_pairs, 1)
        check_int("vocab_size", self.vocab_size, 3)
        if self.num_queries is not None:
            check_int("num_queries", self.num_queries, 1)
            if self.num_queries > self.num_pairs:
                raise ConfigError(
                    f"num_queries: expected at most num_pairs={self.num_pairs} (each key is asked at most "
                    f"once), got {self.num_queries}"
                )
        if self.num_pairs > self.num_keys:
            raise ConfigError(
                f"num_pairs: expected at most {self.num_keys} distinct keys for "
                f"vocab_size={self.vocab_size}, got {self.num_pairs}"
            )
        needed = 2 * self.num_pairs + self.queries
        if self.seq_len < needed:
            raise ConfigError(
                f"seq_len: expected at least 2 * num_pairs + num_queries = {needed}, got {self.seq_len}"
            )

    @property
    def queries(self) -> int:
        """Number of queries per sequence (num_queries, or num_pairs when None)."""
        return self.num_pairs if self.num_queries is None else self.num_queries

    @property
    def num_keys(self) -> int:
        """Number of distinct key tokens, (vocab_size - 1) // 2."""
        return (self.vocab_size - 1) // 2

    @property
    def total_length(self) -> int:
        """Length of one sequence."""
        return self.seq_len

    def sample(
        self, batch_size: int, generator: int | torch.Generator | None = None, device=None
    ) -> TaskBatch:
        """Draw a batch: inputs, targets, mask each (batch_size, seq_len); num_queries asked positions
        per row."""
        check_int("batch_size", batch_size, 1)
        gen = make_generator(generator)
        b, n, q, L = batch_size, self.num_pairs, self.queries, self.seq_len
        K = self.num_keys
        keys = torch.rand(b, K, generator=gen).topk(n, dim=1).indices + 1  # distinct keys per row
        values = torch.randint(K + 1, self.vocab_size, (b, n), generator=gen)
        inputs = torch.full((b, L), BLANK, dtype=torch.long)
        inputs[:, 0 : 2 * n : 2] = keys
        inputs[:, 1 : 2 * n : 2] = values
        asked = torch.rand(b, n, generator=gen).argsort(dim=1)[:, :q]  # which pairs, in query order
        positions = 2 * n + random_positions(b, L - 2 * n, q, gen)
        inputs.scatter_(1, positions, keys.gather(1, asked))
        targets = torch.full((b, L), IGNORE_INDEX, dtype=torch.long)
        targets.scatter_(1, positions, values.gather(1, asked))
        mask = targets != IGNORE_INDEX
        return TaskBatch(inputs.to(device), targets.to(device), mask.to(device))


@dataclass(frozen=True)
class MQARMixture:
    """Several MQAR tasks of one length and vocabulary, one per pair count, drawn as one batch (Zoology
    trains each model on such a mix and evaluates it at each count).

    Args:
        tasks: MQAR tasks with the same seq_len and vocab_size. :meth:`sample` gives each an equal share of
            the rows (the first ``batch_size % len(tasks)`` tasks one more), in order.
    """

    tasks: tuple[MQAR, ...]

    def __post_init__(self) -> None:
        if not self.tasks or not all(isinstance(t, MQAR) for t in self.tasks):
            raise ConfigError(f"tasks: expected a non-empty tuple of MQAR tasks, got {self.tasks!r}")
        shapes = {(t.seq_len, t.vocab_size) for t in self.tasks}
        if len(shapes) != 1:
            raise ConfigError(f"tasks: expected one seq_len and vocab_size, got (seq_len, vocab_size) "
                              f"{sorted(shapes)}")

    @property
    def vocab_size(self) -> int:
        return self.tasks[0].vocab_size

    @property
    def total_length(self) -> int:
        return self.tasks[0].seq_len

    def sample(
        self, batch_size: int, generator: int | torch.Generator | None = None, device=None
    ) -> TaskBatch:
        """One batch (batch_size, seq_len): the rows of each task in turn."""
        check_int("batch_size", batch_size, len(self.tasks))
        gen = make_generator(generator)
        share, extra = divmod(batch_size, len(self.tasks))
        parts = [t.sample(share + (i < extra), gen) for i, t in enumerate(self.tasks)]
        return TaskBatch(*(torch.cat(x).to(device) for x in zip(*parts, strict=True)))


PAPER = MQAR(seq_len=256, num_pairs=16, vocab_size=8192)
"""A Zoology-sized setting (its sweep spans L = 64..512 and 4..64 pairs at vocabulary 8192)."""

SMALL = MQAR(seq_len=64, num_pairs=8, vocab_size=64)
"""A CPU-sized setting."""
