"""Shared checks of the hybrid families' parity tests: a transformers model (the oracle, its torch path) and
the mambakit model loaded from its checkpoint agree on logits and on 32-token greedy generations, and what
mambakit writes loads back in transformers."""

from __future__ import annotations

import pytest
import torch

from mambakit import MambaLMHeadModel

NEW_TOKENS = 32
TOL = 1e-4


def perturb_(model: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Move every weight off its initial value, so that biases, norms, A, D and dt_bias all matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def compare(hf, mk: MambaLMHeadModel, vocab: int, length: int = 37) -> float:
    """Max abs logit difference on a (2, length) batch (asserted <= TOL) and identical greedy generations."""
    ids = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = hf(ids).logits
        got = mk(ids)
    diff = (got[..., :vocab] - want).abs().max().item()
    assert diff <= TOL, diff
    prompt = ids[:, :6]
    expected = hf.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                           eos_token_id=None, pad_token_id=None)
    assert torch.equal(mk.generate(prompt, NEW_TOKENS, temperature=0), expected)
    return diff


def hf_to_mambakit(hf_cls, hf_config, tmp_path, seed: int = 1):
    """A perturbed transformers model saved and loaded by mambakit: (hf model, mambakit model)."""
    torch.manual_seed(0)
    hf = hf_cls(hf_config)
    perturb_(hf, seed)
    hf.eval().save_pretrained(tmp_path)
    return hf, MambaLMHeadModel.from_pretrained(tmp_path).eval()


def mambakit_to_hf(hf_cls, mk: MambaLMHeadModel, tmp_path, seed: int = 2):
    """mambakit's export (perturbed weights) loaded by transformers: the transformers model."""
    perturb_(mk, seed)
    mk.eval().save_pretrained(tmp_path, format="hf")
    return hf_cls.from_pretrained(tmp_path).eval()


@torch.no_grad()
def cached_equals_full(mk: MambaLMHeadModel, vocab: int, length: int = 19, prefix: int = 7) -> float:
    """A prefill of ``prefix`` tokens then one step a token give the full-sequence logits (asserted <= TOL);
    returns the max abs difference."""
    ids = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(5))
    full = mk(ids)
    cache = mk.allocate_inference_cache(2)
    start = mk(ids[:, :prefix], state=cache)
    stepped = torch.stack([mk.step(ids[:, t], cache) for t in range(prefix, length)], 1)
    diff = float((torch.cat([start, stepped], 1) - full).abs().max())
    assert diff <= TOL, diff
    return diff


def export_matches(hf_cls, hf_config, tmp_path, vocab: int):
    """A checkpoint loaded by mambakit, perturbed and exported, loads in transformers with the same logits
    and generations, and back in mambakit with the same config; returns (transformers model, mambakit
    model)."""
    _, mk = hf_to_mambakit(hf_cls, hf_config, tmp_path / "a")
    hf = mambakit_to_hf(hf_cls, mk, tmp_path / "b")
    compare(hf, mk, vocab)
    assert MambaLMHeadModel.from_pretrained(tmp_path / "b").config == mk.config
    return hf, mk


def refuses(tmp_path, hf_model, changes: list[tuple[str, object]], typo: tuple[str, str]) -> None:
    """``hf_model`` saved, then each (key, value) written into its config.json makes loading raise
    CheckpointError naming the key; ``typo`` (a misspelt key, the key it is taken for) names the latter."""
    import json

    from mambakit.errors import CheckpointError

    hf_model.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    for key, value in [*changes, (typo[0], 1.0)]:
        (tmp_path / "config.json").write_text(json.dumps({**raw, key: value}))
        with pytest.raises(CheckpointError, match=typo[1] if key == typo[0] else key):
            MambaLMHeadModel.from_pretrained(tmp_path)
