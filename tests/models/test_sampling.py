"""Sampling: the top-k and top-p filters, greedy at temperature 0, and SamplingOptions' validation."""

import dataclasses

import pytest
import torch

from mambakit.errors import ConfigError
from mambakit.models import SamplingOptions, sample_next_token


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


def test_sampling_options_accept_the_library_range():
    assert SamplingOptions() == SamplingOptions(1.0, None, None, 1.0, None)
    for kwargs in (dict(temperature=0), dict(temperature=0.3), dict(top_k=1), dict(top_p=1.0),
                   dict(top_p=1e-6), dict(repetition_penalty=0.5), dict(repetition_penalty=3),
                   dict(eos_token_id=0)):
        assert dataclasses.asdict(SamplingOptions(**kwargs)).items() >= kwargs.items()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(temperature=-0.5), r"temperature: expected a finite number >= 0 \(0 = greedy\), got -0.5"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(temperature="hot"), "temperature"),
        (dict(top_k=0), "top_k: expected a positive integer, got 0"),
        (dict(top_k=2.0), "top_k"),
        (dict(top_k=True), "top_k"),
        (dict(top_p=0.0), r"top_p: expected None or a number in \(0, 1\], got 0.0"),
        (dict(top_p=1.5), "top_p"),
        (dict(repetition_penalty=0), r"repetition_penalty: expected a number > 0 \(1 = none\), got 0"),
        (dict(repetition_penalty=-1.0), "repetition_penalty"),
        (dict(eos_token_id=-1), "eos_token_id: expected a non-negative integer, got -1"),
        (dict(eos_token_id=1.0), "eos_token_id"),
    ],
)
def test_sampling_options_refuse_naming_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SamplingOptions(**kwargs)


def test_eos_token_id_is_checked_against_the_vocabulary():
    SamplingOptions(eos_token_id=9).check_vocab(10)
    with pytest.raises(ConfigError, match=r"eos_token_id: expected None or an integer in \[0, 10\), got 10"):
        SamplingOptions(eos_token_id=10).check_vocab(10)
    SamplingOptions().check_vocab(1)  # no eos: nothing to check
