"""The Mamba language model: embedding, a pre-norm residual stack of (norm, mixer) layers, final norm,
tied head.

Module and parameter names follow ``mamba_ssm``'s ``MambaLMHeadModel`` (backbone.embedding,
backbone.layers[i].norm, backbone.layers[i].mixer, backbone.norm_f, lm_head), so official checkpoints load by
name.

Residual stream (as officially, with ``fused_add_norm`` or without; they compute the same thing):

    residual = embedding(input_ids) · embedding_multiplier
    for each layer:  residual = residual (in float32 if residual_in_fp32) + mixer(norm(residual))
    logits = lm_head(norm_f(residual)) · logits_multiplier

A hybrid (``config.layer_types``) is the same stack with a block of its own kind in each layer
(:mod:`.layer_types`); its inference cache holds each layer's own state (SSM and conv state, a key-value
cache, or nothing for the feed-forward kinds).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .._checks import check_input_ids, check_int, check_same_device, compute_dtype
from ..errors import ConfigError
from ..layers import RMSNorm, RMSNormGated
from ..layers.shared_transformer import SharedTransformer
from ..ops import packing
from . import generation, pretrained, stack_decode
from .cache import InferenceCache
from .config import MambaConfig
from .mixers import build_mixer
from .sampling import SamplingOptions


class ResidualBlock(nn.Module):
    """One layer of the stack: ``norm`` then ``mixer``; the residual addition is done by the backbone."""

    def __init__(self, config: MambaConfig, layer_idx: int, device=None, dtype=None) -> None:
        super().__init__()
        if config.rms_norm:
            self.norm = RMSNorm(config.d_model, eps=config.norm_epsilon, device=device, dtype=dtype)
        else:
            self.norm = nn.LayerNorm(config.d_model, eps=config.norm_epsilon, device=device, dtype=dtype)
        self.mixer = build_mixer(config, layer_idx, device=device, dtype=dtype)


class MixerModel(nn.Module):
    """The backbone: embedding, layers, final norm; (batch, L) ids -> (batch, L, d_model) hidden states."""

    fused_stack_decode: bool = True   # False: decode layer by layer (the reference of the fused step)

    def __init__(self, config: MambaConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.embedding_multiplier = config.embedding_multiplier
        self.embedding = nn.Embedding(config.vocab_size_padded, config.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(ResidualBlock(config, i, device, dtype) for i in range(config.n_layer))
        self.shared = SharedTransformer.from_config(config, device, dtype)  # None without shared blocks
        norm_cls = RMSNorm if config.rms_norm else nn.LayerNorm
        self.norm_f = norm_cls(config.d_model, eps=config.norm_epsilon, device=device, dtype=dtype)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embedding(input_ids)
        return hidden if self.embedding_multiplier == 1 else hidden * self.embedding_multiplier

    def _norm_input(self, i: int, residual: torch.Tensor, embeddings: torch.Tensor, state,
                    one: bool = False, **packing) -> torch.Tensor:
        """Layer i's norm input: the residual, plus the shared block's term where a use precedes layer i."""
        if self.shared is None or not self.shared.uses_at(i):
            return residual
        if one:
            return residual + self.shared.step(i, residual, embeddings, state)
        return residual + self.shared(i, residual, embeddings, state, **packing)

    def _add(self, residual: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        if self.residual_in_fp32:  # float32 (float64 stays float64), whatever the layers' precision
            residual = residual.to(compute_dtype(residual))
        return residual + update

    def forward(self, input_ids: torch.Tensor, state: InferenceCache | None = None,
                seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (batch, L) -> normalised hidden states (batch, L, d_model); fills ``state`` if given;
        ``seq_idx`` (batch, L) marks packed sequences (every mixer must take it)."""
        if seq_idx is not None:
            self.check_packing()
        packing = {} if seq_idx is None else {"seq_idx": seq_idx}
        residual = embeddings = self._embed(input_ids)
        for i, layer in enumerate(self.layers):
            layer_state = None if state is None else state[i]
            hidden = self._norm_input(i, residual, embeddings, layer_state, **packing)
            hidden = layer.norm(hidden.to(layer.norm.weight.dtype))
            update = layer.mixer(hidden, state=layer_state, **packing)
            residual = self._add(residual, update)
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def check_packing(self) -> None:
        """Raise ConfigError unless every layer's mixer takes packed sequences (``seq_idx``)."""
        for i, layer in enumerate(self.layers):
            if "seq_idx" not in inspect.signature(layer.mixer.forward).parameters:
                raise ConfigError(f"seq_idx: layer {i}'s mixer ({type(layer.mixer).__name__}) does not take "
                                  "packed or padded sequences (Mamba, Mamba-2, Mamba-3, attention, MLP and "
                                  "MoE layers do)")

    def step(self, input_ids: torch.Tensor, state: InferenceCache) -> torch.Tensor:
        """input_ids (batch,) -> hidden states (batch, d_model); advances every layer's state by one token."""
        residual = embeddings = self._embed(input_ids)
        states = [state[i] for i in range(len(self.layers))]
        plan = stack_decode.stack_decoder(self, residual, states)
        if plan is not None:   # a pure Mamba stack on the CPU: every layer in one fused kernel call
            return self.norm_f(plan.step(residual, states))
        for i, layer in enumerate(self.layers):
            hidden = self._norm_input(i, residual, embeddings, state[i], one=True)
            hidden = layer.norm(hidden.to(layer.norm.weight.dtype))
            residual = self._add(residual, layer.mixer.step(hidden, state[i]))
        return self.norm_f(residual.to(self.norm_f.weight.dtype))


class MambaLMHeadModel(nn.Module):
    """Mamba language model. ``forward(input_ids (batch, L)) -> logits (batch, L, vocab_size_padded)``.

    Logits beyond ``config.vocab_size`` belong to padding rows; :meth:`generate` never samples them.
    """

    def __init__(
        self, config: MambaConfig, device=None, dtype=None, generator: torch.Generator | None = None
    ) -> None:
        """Build the model with the official initialisation; ``generator`` (a CPU ``torch.Generator``) makes
        every initial weight reproducible without touching the global random state."""
        super().__init__()
        if not isinstance(config, MambaConfig):
            raise ConfigError(f"config: expected a mambakit.MambaConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        if generator is None:
            self._build(device, dtype)
            return
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        target = torch.device(device) if device is not None else torch.device("cpu")
        accel = [target.index or 0] if target.type == "cuda" else []
        with torch.random.fork_rng(devices=accel):
            torch.manual_seed(seed)
            self._build(device, dtype)

    def _build(self, device, dtype) -> None:
        config = self.config
        self.backbone = MixerModel(config, device=device, dtype=dtype)
        self.lm_head = nn.Linear(
            config.d_model, config.vocab_size_padded, bias=False, device=device, dtype=dtype
        )
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official model-level initialisation (``mamba_ssm``'s ``_init_weights``) on top of each
        mixer's own: Linear biases zero (except the Δ bias), embedding N(0, 0.02), and ``out_proj`` re-drawn
        Kaiming-uniform then scaled by 1/sqrt(n_layer) for the pre-norm residual stack (GPT-2's rescaling,
        one residual per layer)."""
        n_layer = self.config.n_layer
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                if not getattr(module.bias, "_no_reinit", False):
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for layer in self.backbone.layers:
            for name, p in layer.mixer.named_parameters():
                if name in ("out_proj.weight", "fc2.weight"):
                    nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                    p /= math.sqrt(n_layer)

    # ------------------------------------------------------------------------------------------- forward
    def _check_cache(self, state: object, batch: int) -> None:
        if not isinstance(state, InferenceCache) or len(state) != self.config.n_layer:
            got = f"one of {len(state)} layers" if isinstance(state, InferenceCache) else type(state).__name__
            raise ConfigError(
                f"state: expected an InferenceCache of {self.config.n_layer} layers "
                f"(allocate_inference_cache), got {got}"
            )
        if state.batch_size != batch:
            raise ConfigError(f"state: expected a cache of {batch} rows (the batch of input_ids), "
                              f"got {state.batch_size}")

    def forward(
        self,
        input_ids: torch.Tensor,
        state: InferenceCache | None = None,
        num_last_tokens: int = 0,
        *,
        seq_idx: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (batch, L) integer -> logits (batch, L, vocab_size_padded).

        Several sequences in one row, each computed as if alone (see :mod:`mambakit.ops.packing`), given
        by at most one of: ``seq_idx`` (batch, L) ids; ``cu_seqlens`` (n + 1,) offsets of n sequences packed
        in one row (batch 1); ``position_ids`` (batch, L) restarting at 0 per sequence (transformers'
        padding-free training); ``attention_mask`` (batch, L) of a left-padded batch (0 = padding), whose
        padding never reaches the state, so each row's logits on its tokens are those of its prompt alone.

        With ``state`` (from :meth:`allocate_inference_cache`), the forward continues from that state (a zero
        cache = a fresh prompt) and on return ``state`` holds every layer's recurrent state after the last
        token, ready for :meth:`step` or the next chunk: ``model(chunk, state=cache)`` repeated over the
        chunks of a long sequence gives the logits of one forward over all of it.
        ``num_last_tokens > 0`` computes the logits of the last positions only, (batch, num_last_tokens, V).
        """
        check_input_ids(input_ids, self.config.vocab_size)
        check_same_device(input_ids=input_ids, weights=self.lm_head.weight)
        if state is not None:
            self._check_cache(state, input_ids.shape[0])
        check_int("num_last_tokens", num_last_tokens, minimum=0)
        seq_idx = packing.resolve_seq_idx(input_ids, seq_idx=seq_idx, cu_seqlens=cu_seqlens,
                                          position_ids=position_ids, attention_mask=attention_mask)
        hidden = self.backbone(input_ids, state=state, seq_idx=seq_idx)
        if num_last_tokens > 0:
            hidden = hidden[:, -num_last_tokens:]
        return self._logits(hidden)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = stack_decode.head_logits(self.lm_head, hidden)
        multiplier = self.config.logits_multiplier
        return logits if multiplier == 1 else logits * multiplier

    def allocate_inference_cache(self, batch_size: int, device=None, dtype=None) -> InferenceCache:
        """A zero recurrent state for every layer, as an :class:`~mambakit.models.cache.InferenceCache`
        (``cache[i]`` is layer i's state dict: for Mamba, conv_state (batch, d_inner, d_conv) and ssm_state
        (batch, d_inner, d_state); for Mamba-2, conv_state (batch, conv_dim, d_conv) and ssm_state
        (batch, heads, headdim, d_state))."""
        check_int("batch_size", batch_size)
        states = [layer.mixer.allocate_state(batch_size, device=device, dtype=dtype)
                  for layer in self.backbone.layers]
        shared = self.backbone.shared
        for i in shared.layers if shared is not None else []:  # a shared block's use keeps its own cache
            states[i] = {**states[i], **shared.allocate_state(i, batch_size, device=device, dtype=dtype)}
        return InferenceCache(states)

    def step(self, input_ids: torch.Tensor, state: InferenceCache) -> torch.Tensor:
        """One token per row: input_ids (batch,) -> logits (batch, vocab_size_padded); O(1) work per token."""
        check_input_ids(input_ids, self.config.vocab_size, ndim=1)
        check_same_device(input_ids=input_ids, weights=self.lm_head.weight)
        self._check_cache(state, input_ids.shape[0])
        return self._logits(self.backbone.step(input_ids, state))

    # --------------------------------------------------------------------------------------- generation
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
        repetition_penalty: float = 1.0,
        streamer: Callable[[torch.Tensor], None] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prompt (batch, L) -> prompt followed by the new tokens (batch, L + n), n <= max_new_tokens.

        Prompts of different lengths: left-pad them and pass ``attention_mask`` (batch, L), 0 on padding.

        The sampling keywords are the fields of :class:`~mambakit.models.sampling.SamplingOptions` (greedy
        when ``temperature == 0``); see :func:`mambakit.models.generation.generate`.
        """
        options = SamplingOptions(
            temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
            eos_token_id=eos_token_id,
        )
        return generation.generate(
            self, input_ids, max_new_tokens, options=options, generator=generator, streamer=streamer,
            attention_mask=attention_mask,
        )

    def generate_iter(self, input_ids: torch.Tensor, max_new_tokens: int, **kwargs) -> Iterator[torch.Tensor]:
        """Yield each new token (batch,) as it is produced; keywords as :meth:`generate` (no streamer)."""
        return generation.generate_tokens(self, input_ids, max_new_tokens, **kwargs)

    # ------------------------------------------------------------------------------------------ training
    def no_weight_decay_param_names(self) -> set[str]:
        """Names of parameters the optimiser should not decay: biases, norm weights (Mamba-2's gated norm
        too), the embedding, and parameters marked ``_no_weight_decay`` (A_log and D; Mamba-2's dt_bias)."""
        names = set()
        norm_types = (RMSNorm, nn.LayerNorm, RMSNormGated)
        for module_name, module in self.named_modules():
            for p_name, p in module.named_parameters(recurse=False):
                full = f"{module_name}.{p_name}" if module_name else p_name
                if (
                    p_name == "bias"
                    or isinstance(module, norm_types)
                    or isinstance(module, nn.Embedding)
                    or getattr(p, "_no_weight_decay", False)
                ):
                    names.add(full)
        present = {n for n, _ in self.named_parameters()}  # drops the tied head's duplicate name
        return names & present

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Two optimiser groups: decayed weights, and the :meth:`no_weight_decay_param_names` at decay 0."""
        skip = self.no_weight_decay_param_names()
        decay = [p for n, p in self.named_parameters() if p.requires_grad and n not in skip]
        no_decay = [p for n, p in self.named_parameters() if p.requires_grad and n in skip]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # ------------------------------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device=None, dtype=None) -> MambaLMHeadModel:
        """Load a directory in the state-spaces or the Hugging Face layout; see :mod:`.pretrained`."""
        return pretrained.load_pretrained(cls, path, device=device, dtype=dtype)

    def save_pretrained(self, path: str | os.PathLike, format: str = "mambakit") -> None:
        """Write ``config.json`` and ``model.safetensors``: ``format="mambakit"`` (state-spaces layout) or
        ``"hf"`` (transformers ``MambaForCausalLM``); see :mod:`.pretrained`."""
        if getattr(self, "quantized_weights", None) is not None:
            raise ConfigError(f"save_pretrained: this model holds {self.quantized_weights} inference weights "
                              "(quantize_weights); save the float model it was made from")
        pretrained.save_pretrained(self, path, format=format)
