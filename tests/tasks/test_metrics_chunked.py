"""Chunked evaluation of a model (its own forward, the cache carried between chunks): equal to the full
forward pass, for Mamba, Mamba-2 and Mamba-3 (SISO, MIMO) and chunk sizes that do and do not divide the
length; last-position accuracy for Mamba and non-Mamba models; bad input."""

import pytest
import torch
from experiments.settings import build_model

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import ConfigError
from mambakit.tasks import InductionHeads
from mambakit.tasks.metrics import chunked_last_logits, last_position_accuracy


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("chunk_len", [1, 7, 24, 100])
@pytest.mark.parametrize("mixer", ["mamba", "mamba2", "mamba3", "mamba3-mimo"])
def test_chunked_logits_equal_the_full_forward(dtype, tol, chunk_len, mixer):
    if mixer.startswith("mamba3"):
        mimo = {"is_mimo": True, "mimo_rank": 2} if mixer == "mamba3-mimo" else {}
        config = MambaConfig(d_model=16, n_layer=2, vocab_size=11, d_state=8, mixer="mamba3",
                             mixer_cfg={"headdim": 8, "chunk_size": 4, **mimo})
        model = MambaLMHeadModel(config, generator=torch.Generator().manual_seed(0)).to(dtype)
    elif mixer == "mamba2":
        config = MambaConfig(d_model=16, n_layer=2, vocab_size=11, d_state=4, mixer="mamba2",
                             mixer_cfg={"headdim": 8, "chunk_size": 4})
        model = MambaLMHeadModel(config, generator=torch.Generator().manual_seed(0)).to(dtype)
    else:
        model = build_model(mixer, 11, d_model=16, n_layer=2, d_state=4, seed=0).to(dtype)
    ids = torch.randint(0, 11, (2, 24))
    with torch.no_grad():
        full = model(ids)[:, -1]
    assert float((chunked_last_logits(model, ids, chunk_len) - full).abs().max()) <= tol


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
