"""Chunked evaluation of a Mamba model with its state carried between chunks: equal to the full forward pass
(logits and the states it leaves), for chunk sizes that do and do not divide the length; last-position
accuracy for Mamba and non-Mamba models; bad input."""

import pytest
import torch

from mambakit.errors import ConfigError
from mambakit.tasks import InductionHeads
from mambakit.tasks.chunked import chunked_last_logits, last_position_accuracy, mamba_block_continue
from mambakit.tasks.experiment import build_model


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("chunk_len", [1, 7, 24, 100])
def test_chunked_logits_equal_the_full_forward(dtype, tol, chunk_len):
    model = build_model("mamba", 11, d_model=16, n_layer=2, d_state=4, seed=0).to(dtype)
    ids = torch.randint(0, 11, (2, 24))
    with torch.no_grad():
        full = model(ids)[:, -1]
    assert float((chunked_last_logits(model, ids, chunk_len) - full).abs().max()) <= tol


def test_block_continuation_leaves_the_state_a_full_prefill_leaves():
    block = build_model("mamba", 7, d_model=16, n_layer=1, d_state=4, seed=1).to(torch.float64)
    block = block.backbone.layers[0].mixer
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    with torch.no_grad():
        full_state = block.allocate_state(2)
        full = block(x, state=full_state)
        state = block.allocate_state(2)
        pieces = [block(x[:, :5], state=state)]  # a prompt, then two continued chunks
        pieces += [
            mamba_block_continue(block, x[:, 5:6], state),
            mamba_block_continue(block, x[:, 6:], state),
        ]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-10, atol=1e-10)
    for name in ("conv_state", "ssm_state"):
        torch.testing.assert_close(state[name], full_state[name], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mixer", ["mamba", "s4d", "attention"])
def test_last_position_accuracy_counts_argmax_at_the_end(mixer):
    model = build_model(mixer, 8, d_model=16, n_layer=2, d_state=4, seed=0)
    batch = InductionHeads(seq_len=30, vocab_size=8).sample(5, generator=0)
    with torch.no_grad():
        expected = (model(batch.inputs)[:, -1].argmax(-1) == batch.targets[:, -1]).float().mean()
    got = last_position_accuracy(model, batch, chunk_len=7, max_tokens=60)  # non-Mamba: 2 rows per pass
    assert got == pytest.approx(float(expected))


def test_bad_input_is_named():
    model = build_model("s4d", 8, d_model=16, n_layer=1, d_state=4, seed=0)
    with pytest.raises(ConfigError, match="model"):
        chunked_last_logits(model, torch.zeros(1, 4, dtype=torch.long))
    mamba = build_model("mamba", 8, d_model=16, n_layer=1, d_state=4, seed=0)
    with pytest.raises(ConfigError, match="chunk_len"):
        chunked_last_logits(mamba, torch.zeros(1, 4, dtype=torch.long), chunk_len=0)
    batch = InductionHeads(seq_len=8, vocab_size=8).sample(2, generator=0)
    batch.mask[:, 0] = True
    with pytest.raises(ConfigError, match="batch"):
        last_position_accuracy(mamba, batch)
