"""Run a Mamba language model over a very long sequence chunk by chunk, carrying each layer's recurrent state
from one chunk to the next: the memory of a chunk, the speed of the parallel scan.

The mixer protocol's ``forward(..., state)`` always starts from a zero state, and ``step`` costs a Python
round trip per token (hours at L = 2^20). Here a chunk continues from a given state instead: the selective
scan starts from the layer's carried SSM state (``selective_scan(..., initial_state=h0)``, Mamba paper eq. 2a
with h_{-1} = h0) and returns the state after the chunk, so each chunk costs one ordinary scan of its
length. The causal convolution continues from the last d_conv − 1 inputs kept in ``conv_state``.
"""

from __future__ import annotations

import torch

from .._checks import check_input_ids
from ..errors import ConfigError
from ..layers.mamba import MambaBlock
from ..models.lm import MambaLMHeadModel
from ..ops.conv1d import causal_conv1d_ref
from ..ops.selective_scan import selective_scan
from .batch import TaskBatch, check_int


@torch.no_grad()
def mamba_block_continue(
    block: MambaBlock, hidden_states: torch.Tensor, state: dict[str, torch.Tensor]
) -> torch.Tensor:
    """hidden_states (batch, T, d_model) following the tokens summarised by ``state`` -> (batch, T, d_model).

    ``state`` (as made by ``block.allocate_state`` and filled by ``forward(..., state)`` or ``step``) is
    advanced in place past the T new tokens."""
    W = block.d_conv
    xz = block.in_proj(hidden_states).transpose(1, 2)  # (batch, 2·d_inner, T)
    x, z = xz.chunk(2, dim=1)
    # The convolution window of the first new token reaches back W − 1 inputs into the previous chunk.
    x_ext = torch.cat([state["conv_state"][:, :, 1:].to(x.dtype), x], dim=2)
    state["conv_state"].copy_(x_ext[:, :, -W:])
    weight = block.conv1d.weight.squeeze(1).to(x.dtype)
    bias = None if block.conv1d.bias is None else block.conv1d.bias.to(x.dtype)
    x = causal_conv1d_ref(x_ext, weight, bias, activation="silu")[:, :, W - 1 :]
    dt, B, C = torch.split(
        block.x_proj(x.transpose(1, 2)), [block.dt_rank, block.d_state, block.d_state], dim=-1
    )
    dt = (dt @ block.dt_proj.weight.t()).transpose(1, 2)  # (batch, d_inner, T)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32  # as MambaBlock.forward
    y, last = selective_scan(
        x,
        dt,
        -torch.exp(block.A_log.to(compute)),
        B.transpose(1, 2),
        C.transpose(1, 2),
        D=block.D.to(compute),
        z=z,
        delta_bias=block.dt_proj.bias.to(compute),
        delta_softplus=True,
        return_last_state=True,
        backend=block.scan_backend,
        initial_state=state["ssm_state"],
    )
    state["ssm_state"].copy_(last)
    return block.out_proj(y.transpose(1, 2))


@torch.no_grad()
def chunked_last_logits(
    model: MambaLMHeadModel, input_ids: torch.Tensor, chunk_len: int = 4096
) -> torch.Tensor:
    """Logits at the last position, (batch, vocab_size_padded), of a Mamba model over input_ids (batch, L),
    computed ``chunk_len`` tokens at a time: memory O(batch · chunk_len), whatever L.

    Every layer's mixer must be a :class:`MambaBlock` (other mixers have no state-continuing forward)."""
    check_int("chunk_len", chunk_len, 1)
    check_input_ids(input_ids, model.config.vocab_size)
    backbone = model.backbone
    for i, layer in enumerate(backbone.layers):
        if not isinstance(layer.mixer, MambaBlock):
            raise ConfigError(
                f"model: chunked evaluation needs Mamba mixers, layer {i} is {type(layer.mixer).__name__}"
            )
    cache = model.allocate_inference_cache(input_ids.shape[0], device=input_ids.device)
    last_hidden = None
    for start in range(0, input_ids.shape[1], chunk_len):
        residual = backbone.embedding(input_ids[:, start : start + chunk_len])
        for layer, state in zip(backbone.layers, cache, strict=True):
            hidden = layer.norm(residual.to(layer.norm.weight.dtype))
            if backbone.residual_in_fp32 and residual.dtype != torch.float64:  # as MixerModel does
                residual = residual.float()
            residual = residual + mamba_block_continue(layer.mixer, hidden, state)
        last_hidden = residual[:, -1]
    return model.lm_head(backbone.norm_f(last_hidden.to(backbone.norm_f.weight.dtype)))


def _uses_mamba_only(model: MambaLMHeadModel) -> bool:
    return all(isinstance(layer.mixer, MambaBlock) for layer in model.backbone.layers)


@torch.no_grad()
def last_position_accuracy(
    model: MambaLMHeadModel, batch: TaskBatch, chunk_len: int = 2048, max_tokens: int = 2**18
) -> float:
    """Accuracy at the last position of every row of ``batch`` (only that position may be asked, as in
    induction heads), for sequences of any length.

    A Mamba model runs chunk by chunk (:func:`chunked_last_logits`, memory O(batch · chunk_len)); any other
    model runs one full forward pass per group of rows holding at most ``max_tokens`` tokens (memory grows
    with L: the caller caps L for those)."""
    if bool(batch.mask[:, :-1].any()) or not bool(batch.mask[:, -1].all()):
        raise ConfigError("batch: expected exactly the last position of every row to be asked")
    check_int("max_tokens", max_tokens, 1)
    was_training = model.training
    model.eval()
    b, L = batch.inputs.shape
    if _uses_mamba_only(model):
        logits = chunked_last_logits(model, batch.inputs, chunk_len)
    else:
        rows = max(1, max_tokens // L)
        logits = torch.cat(
            [model(batch.inputs[i : i + rows], num_last_tokens=1)[:, -1] for i in range(0, b, rows)]
        )
    model.train(was_training)
    return float((logits.argmax(-1) == batch.targets[:, -1]).float().mean())
