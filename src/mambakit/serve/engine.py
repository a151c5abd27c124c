"""The engine: continuous batching over a pool of recurrent states, on one scheduler thread.

The pool is one :class:`~mambakit.models.cache.InferenceCache` of ``slots`` rows; each running request owns
a row. Between two steps, requests join (a free row gets a zero state, or the kept state of the prompt's
longest cached prefix) and leave (finished, stopped or cancelled: the row is free again). One iteration of
the scheduler does

1. a prefill chunk: at most ``prefill_chunk`` prompt tokens, of one request or several side by side (rows
   that advance by the same number of tokens, so nothing is padded), written into their rows; a long prompt
   takes several iterations, so it never stalls the running streams for more than one chunk;
2. one decode step: ``model.step`` over the rows of every request that has a token to feed, one batched
   call, then each row's next token by its own sampling options and generator.

Requests beyond the slots wait in a queue, first come first served. The states after the prompt (and after
each message boundary a chat prompt names, and at the end of a generation) go into the
:class:`~.prefix_cache.PrefixCache`, so a later prompt that starts with them skips that part of its prefill;
the result is the same tokens as a cold run. The model is only ever touched by the scheduler thread; the
HTTP side talks to it through :meth:`Engine.submit` (thread-safe) and the events it gets back.
"""

from __future__ import annotations

import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..models.sampling import SamplingOptions, apply_repetition_penalty, sample_next_token
from .metrics import Metrics
from .prefix_cache import PrefixCache
from .text import TextAssembler


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: the prompt's token ids, how many new tokens at most, how to sample them."""

    prompt_ids: list[int]
    max_new_tokens: int
    options: SamplingOptions = field(default_factory=lambda: SamplingOptions(temperature=0.0))
    seed: int | None = None
    stops: tuple[str, ...] = ()
    keep_prefixes: tuple[int, ...] = ()  # prompt lengths whose state is worth keeping (message ends)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens whose prefill the prefix cache saved


@dataclass(frozen=True)
class TextEvent:
    """New final text (may be empty when a token adds none yet)."""

    text: str


@dataclass(frozen=True)
class FinishEvent:
    """The end: ``reason`` is "stop" (eos or a stop sequence), "length", or "cancelled"."""

    reason: str
    usage: Usage
    text: str = ""  # the last piece of text, released at the end


@dataclass(frozen=True)
class ErrorEvent:
    message: str


Event = TextEvent | FinishEvent | ErrorEvent
Sink = Callable[[Event], None]


class _Sequence:
    """A request while it waits or runs."""

    def __init__(self, request: GenerationRequest, sink: Sink, tokenizer, vocab_size: int,
                 device: torch.device) -> None:
        self.request, self.sink = request, sink
        self.prompt = request.prompt_ids
        self.opts = request.options
        self.keep = set(request.keep_prefixes) | {len(self.prompt)}
        self.text = TextAssembler(tokenizer, request.stops)
        self.generator: torch.Generator | None = None
        if self.opts.temperature > 0:
            self.generator = torch.Generator(device=device)   # where the logits it samples from live
            seed = request.seed if request.seed is not None else int(torch.seed())
            self.generator.manual_seed(seed % 2**64)
        self.seen: torch.Tensor | None = None
        if self.opts.repetition_penalty != 1.0:
            self.seen = torch.zeros(1, vocab_size, dtype=torch.bool, device=device)
            self.seen[0, torch.tensor(self.prompt, dtype=torch.long, device=device)] = True
        self.slot = -1
        self.offset = 0  # prompt tokens in the row's state
        self.cached = 0
        self.generated: list[int] = []
        self.pending: int | None = None  # the last sampled token, to feed at the next step
        self.cancelled = False

    def next_stop(self) -> int:
        """Where the current prefill chunk must end: the next kept prefix, or the end of the prompt."""
        return min(n for n in self.keep if n > self.offset)


class Ticket:
    """The caller's handle on a submitted request: :meth:`cancel` frees its slot at the next step."""

    def __init__(self, engine: Engine, seq: _Sequence) -> None:
        self._engine, self._seq = engine, seq

    def cancel(self) -> None:
        self._engine._cancel(self._seq)


class Engine:
    """Continuous batching for one model; start with :meth:`start`, feed with :meth:`submit`."""

    def __init__(self, model, tokenizer, *, slots: int = 8, prefill_chunk: int = 256,
                 prefix_cache_bytes: int = 256 * 2**20, max_queue: int = 1024,
                 metrics: Metrics | None = None) -> None:
        if not isinstance(slots, int) or slots < 1:
            raise ConfigError(f"slots: expected an integer >= 1, got {slots!r}")
        if not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise ConfigError(f"prefill_chunk: expected an integer >= 1, got {prefill_chunk!r}")
        self.model, self.tokenizer = model, tokenizer
        self.vocab_size = model.config.vocab_size
        self.eos = tokenizer.eos_token_id
        self.slots, self.prefill_chunk, self.max_queue = slots, prefill_chunk, max_queue
        self.device = next(model.parameters()).device
        self._zero = model.allocate_inference_cache(1, device=self.device)
        # A KV cache has one length for all its rows, so a model with attention layers (a hybrid) keeps a
        # cache per slot and steps its requests one by one; a recurrent model keeps one pool of states.
        self.per_slot = any(t.dim() == 0 for layer in self._zero for t in layer.values())
        self.pool = None if self.per_slot else model.allocate_inference_cache(slots, device=self.device)
        self._caches: list = [None] * slots
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self.metrics = metrics or Metrics()
        self._free = list(range(slots - 1, -1, -1))
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._wake = None  # the asyncio.Event of run()
        self.steps = 0

    # ------------------------------------------------------------------------------------- the outside
    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="mambakit-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._notify()
        if self._thread is not None:
            self._thread.join()

    def submit(self, request: GenerationRequest, sink: Sink) -> Ticket:
        """Queue ``request``; ``sink`` gets its events, on the engine thread. Raises :class:`QueueFull`."""
        seq = _Sequence(request, sink, self.tokenizer, self.vocab_size, self.device)
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"queue: {len(self._waiting)} requests are waiting already "
                                f"(the limit); try again later")
            self._waiting.append(seq)
            self._notify()
        return Ticket(self, seq)

    def _cancel(self, seq: _Sequence) -> None:
        with self._cond:
            seq.cancelled = True
            self._notify()

    def _notify(self) -> None:
        self._cond.notify_all()
        if self._wake is not None:
            self._wake.set()

    @property
    def busy_slots(self) -> int:
        return self.slots - len(self._free)

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    # ---------------------------------------------------------------------------------------- the loop
    def _admit(self) -> list[_Sequence]:
        """Waiting requests that get a free slot now (under the lock)."""
        admitted = []
        while self._waiting and (self._free or self._waiting[0].cancelled):
            seq = self._waiting.popleft()
            if not seq.cancelled:
                seq.slot = self._free.pop()
                admitted.append(seq)
        return admitted

    def _safe_iteration(self, admitted: list[_Sequence]) -> None:
        try:
            self._iteration(admitted)
        except Exception:  # a bug must not take the server down: fail the requests it touched
            traceback.print_exc()
            for seq in list(self._running) + [s for s in admitted if s not in self._running]:
                self._leave(seq)
                seq.sink(ErrorEvent("the engine failed on this request; see the server log"))

    def _shut_down(self) -> None:
        for seq in list(self._running) + list(self._waiting):
            seq.sink(ErrorEvent("the server is shutting down"))

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._waiting and not self._running:
                        self._cond.wait()
                    if self._stopping:
                        break
                    admitted = self._admit()
                self._safe_iteration(admitted)
        self._shut_down()

    async def run(self) -> None:
        """The scheduler as a task on the running event loop, instead of :meth:`start`'s thread: one
        iteration at a time between the loop's other work. For small models this beats a thread (no
        wake-ups across threads, no waiting for the interpreter lock between the two); :meth:`submit`
        and cancellation must then come from the loop's thread. Ends when :meth:`stop` is called."""
        import asyncio

        self._wake = asyncio.Event()
        try:
            while True:
                with self._cond:
                    idle = not self._waiting and not self._running
                    if not self._stopping and idle:
                        self._wake.clear()
                if idle and not self._stopping:
                    await self._wake.wait()
                if self._stopping:
                    break
                with self._cond:
                    admitted = self._admit()
                with torch.inference_mode():
                    self._safe_iteration(admitted)
                await asyncio.sleep(0)
        finally:
            self._shut_down()

    def _iteration(self, admitted: list[_Sequence]) -> None:
        for seq in admitted:
            self._join(seq)
        for seq in [s for s in self._running if s.cancelled]:
            self._finish(seq, "cancelled")
        self._prefill_chunk()
        self._decode_step()

    def _join(self, seq: _Sequence) -> None:
        """Put an admitted request into its slot: from its longest kept prefix, or from zero."""
        self._running.append(seq)
        entry = self.prefix_cache.lookup(seq.prompt)
        start = entry.state if entry is not None else self._zero
        if self.per_slot:
            self._caches[seq.slot] = start.clone()
        else:
            self.pool.copy_(start, rows=[seq.slot])
        if entry is not None:
            seq.offset = seq.cached = entry.length
        self.metrics.admitted(len(seq.prompt), seq.cached)
        if seq.offset == len(seq.prompt):  # the whole prompt was kept: its logits too
            self._emit([seq], entry.logits[None])

    def _prefill_chunk(self) -> None:
        """Advance some prompts by up to ``prefill_chunk`` tokens in all, rows side by side."""
        todo = [s for s in self._running if s.offset < len(s.prompt)]
        if not todo:
            return
        length = min(self.prefill_chunk, todo[0].next_stop() - todo[0].offset)
        group = [todo[0]]
        for seq in todo[1:] if not self.per_slot else ():
            if (len(group) + 1) * length > self.prefill_chunk:
                break
            if seq.next_stop() - seq.offset >= length:
                group.append(seq)
        rows = [s.slot for s in group]
        ids = torch.tensor([s.prompt[s.offset:s.offset + length] for s in group], device=self.device)
        sub = self._caches[rows[0]] if self.per_slot else self.pool.select(rows)
        logits = self.model(ids, state=sub, num_last_tokens=1)[:, -1, :self.vocab_size]
        if not self.per_slot:
            self.pool.copy_(sub, rows=rows)
        done = []
        for i, seq in enumerate(group):
            seq.offset += length
            if seq.offset in seq.keep and self.prefix_cache.enabled:
                self.prefix_cache.store(seq.prompt[:seq.offset], sub.select([i]), logits[i].clone())
            if seq.offset == len(seq.prompt):
                done.append(i)
        if done:
            self._emit([group[i] for i in done], logits[done])

    def _decode_step(self) -> None:
        """Feed every running request's pending token in one batched step."""
        batch = [s for s in self._running if s.pending is not None]
        if not batch:
            return
        rows = [s.slot for s in batch]
        tokens = torch.tensor([s.pending for s in batch], device=self.device)
        if self.per_slot:
            logits = torch.cat([self.model.step(tokens[i:i + 1], self._caches[row])
                                for i, row in enumerate(rows)])
        elif rows == list(range(self.slots)):
            logits = self.model.step(tokens, self.pool)
        else:
            sub = self.pool.select(rows)
            logits = self.model.step(tokens, sub)
            self.pool.copy_(sub, rows=rows)
        self.steps += 1
        self._emit(batch, logits[:, :self.vocab_size])

    # ---------------------------------------------------------------------------------- tokens and ends
    def _sample(self, batch: list[_Sequence], logits: torch.Tensor) -> list[int]:
        """Each row's next token by its own options (as :func:`mambakit.models.generate` picks it)."""
        plain = {i for i, s in enumerate(batch) if s.opts.temperature == 0 and s.seen is None}
        if len(plain) == len(batch):   # all greedy: one argmax (the float cast would not change it)
            return logits.argmax(dim=-1).tolist()
        out = [0] * len(batch)
        if plain:
            rows = sorted(plain)
            for i, token in zip(rows, logits[rows].argmax(dim=-1).tolist(), strict=True):
                out[i] = token
        for i, seq in enumerate(batch):
            if i in plain:
                continue
            row = logits[i:i + 1].float()
            if seq.seen is not None:
                row = apply_repetition_penalty(row, seq.seen, seq.opts.repetition_penalty)
            o = seq.opts
            out[i] = int(sample_next_token(row, o.temperature, o.top_k, o.top_p, seq.generator)[0])
            if seq.seen is not None:
                seq.seen[0, out[i]] = True
        return out

    def _emit(self, batch: list[_Sequence], logits: torch.Tensor) -> None:
        tokens = self._sample(batch, logits)
        self.metrics.generated(len(tokens))
        for i, (seq, token) in enumerate(zip(batch, tokens, strict=True)):
            seq.generated.append(token)
            if self.eos is not None and token == self.eos:
                self._finish(seq, "stop", logits=logits[i])
                continue
            text, stopped = seq.text.push(token)
            if stopped:
                self._finish(seq, "stop", text, logits[i])
            elif len(seq.generated) >= seq.request.max_new_tokens:
                self._finish(seq, "length", text + seq.text.flush(), logits[i])
            else:
                seq.pending = token
                if text:
                    seq.sink(TextEvent(text))

    def _finish(self, seq: _Sequence, reason: str, text: str = "",
                logits: torch.Tensor | None = None) -> None:
        """End ``seq``; ``logits`` are the ones its last token was drawn from."""
        if logits is not None and len(seq.generated) > 1 and self.prefix_cache.enabled:
            # The row holds the state after the prompt and every generated token but the last (not fed
            # yet), and ``logits`` follow it: the next turn of the same chat starts with these tokens.
            fed = seq.prompt + seq.generated[:-1]
            self.prefix_cache.store(fed, self._state_of(seq.slot), logits.clone())
        self._leave(seq)
        self.metrics.finish(reason)
        usage = Usage(len(seq.prompt), len(seq.generated), seq.cached)
        seq.sink(FinishEvent(reason, usage, text))

    def _state_of(self, slot: int):
        """A copy of the state in ``slot``."""
        return self._caches[slot].clone() if self.per_slot else self.pool.select([slot])

    def _leave(self, seq: _Sequence) -> None:
        if seq in self._running:
            self._running.remove(seq)
            self._free.append(seq.slot)
            self._caches[seq.slot] = None   # a per-slot KV cache goes with its request
        seq.pending = None


class QueueFull(ConfigError):
    """Every slot is busy and the queue is at its limit."""
