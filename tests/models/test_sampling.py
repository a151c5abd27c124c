"""Sampling: the top-k and top-p filters, greedy at temperature 0, and SamplingOptions' validation."""


import torch

from mambakit.models import sample_next_token


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next_token(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    probs = torch.softmax(logits[0], -1)  # 0.636, 0.234, 0.086, ...
    got = sample_next_token(logits, 1.0, top_p=0.8, generator=g)  # keeps the first two (0.636 < 0.8)
    assert set(got.tolist()) == {0, 1}
    frac = (got == 0).float().mean().item()
    assert abs(frac - probs[0] / (probs[0] + probs[1])) < 0.05
    assert set(sample_next_token(logits, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert torch.equal(sample_next_token(logits[:2], 0.0), torch.zeros(2, dtype=torch.long))
