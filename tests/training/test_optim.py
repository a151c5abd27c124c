"""Optimiser groups (what is decayed) and the warmup + cosine schedule."""

import math

import pytest
import torch

from mambakit.errors import ConfigError
from mambakit.models import MambaConfig, MambaLMHeadModel
from mambakit.training import build_adamw, lr_at, no_decay_parameter_names


def test_no_decay_on_biases_norms_embeddings_A_log_D():
    model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=2, vocab_size=64, d_state=4))
    skip = no_decay_parameter_names(model)
    names = dict(model.named_parameters())
    for name, param in names.items():
        leaf = name.rsplit(".", 1)[-1]
        expected_skip = (leaf in ("A_log", "D", "bias") or "norm" in name or "embedding" in name
                         or param.dim() < 2)
        assert (name in skip) == expected_skip, name
    assert any(n.endswith("A_log") for n in skip) and any(n.endswith(".D") for n in skip)
    assert any(n.endswith("in_proj.weight") for n in names if n not in skip)
    opt = build_adamw(model, lr=1e-3, weight_decay=0.1)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(names)
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_fused_adamw_steps_as_the_plain_loop():
    # build_adamw's fused kernel against torch's one-parameter-at-a-time AdamW, same groups, 5 steps.
    torch.manual_seed(0)
    models = [MambaLMHeadModel(MambaConfig(d_model=32, n_layer=2, vocab_size=64)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = build_adamw(models[0], lr=1e-2, weight_decay=0.1)
    assert fused.defaults["fused"]
    plain = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]}
                               for g in build_adamw(models[1], lr=1e-2, weight_decay=0.1).param_groups],
                              lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    ids = torch.randint(0, 64, (2, 17))
    start = models[0].backbone.layers[0].mixer.in_proj.weight.detach().clone()
    for _ in range(5):
        for model, opt in zip(models, (fused, plain), strict=True):
            logits = model(ids[:, :-1])
            torch.nn.functional.cross_entropy(logits.reshape(-1, 64), ids[:, 1:].reshape(-1)).backward()
            opt.step()
            opt.zero_grad()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    assert not torch.allclose(models[0].backbone.layers[0].mixer.in_proj.weight, start, atol=1e-3)


def test_warmup_then_cosine_to_the_floor():
    peak, warmup, total = 1e-3, 10, 110
    lrs = [lr_at(s, peak, warmup, total, min_lr_ratio=0.1) for s in range(1, total + 20)]
    assert lrs[0] == pytest.approx(peak / warmup)
    assert lrs[warmup - 1] == pytest.approx(peak)
    assert all(a < b for a, b in zip(lrs[:warmup - 1], lrs[1:warmup], strict=True))
    after = lrs[warmup - 1:total]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    assert lrs[total - 1] == pytest.approx(0.1 * peak) and lrs[-1] == pytest.approx(0.1 * peak)
    midpoint = warmup + (total - warmup) // 2
    assert lrs[midpoint - 1] == pytest.approx(0.1 * peak + 0.9 * peak * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(1, peak, 0, 10) == pytest.approx(peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 10))))
    with pytest.raises(ConfigError, match="total_steps"):
        lr_at(1, peak, 0, 0)
