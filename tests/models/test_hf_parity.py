"""Parity with transformers' MambaForCausalLM (the oracle), both directions, and the state-spaces layout.

Tiny random models, no network: logits over the real vocabulary within 1e-4 (fp32) and identical greedy
generations of 32 new tokens.
"""

import json

import pytest
import torch
import transformers

from mambakit import MambaConfig, MambaLMHeadModel

# (hidden_size, state_size, conv_kernel, time_step_rank, use_conv_bias, use_bias, vocab, tied,
#  residual_in_fp32, layer_norm_epsilon)
CASES = {
    "s4-k2-rank3-noconvbias-v101": (32, 4, 2, 3, False, False, 101, True, True, 1e-5),
    "s16-k4-auto-convbias-v97": (48, 16, 4, "auto", True, False, 97, True, True, 1e-5),
    "s4-k4-auto-bias-untied-v64": (16, 4, 4, "auto", True, True, 64, False, False, 1e-6),
    "s16-k2-rank8-noconvbias-v50": (64, 16, 2, 8, False, False, 50, True, True, 1e-5),
}
NEW_TOKENS = 32
TOL = 1e-4


def hf_config(case) -> transformers.MambaConfig:
    d, n, k, rank, conv_bias, bias, vocab, tied, fp32, eps = case
    return transformers.MambaConfig(
        vocab_size=vocab,
        hidden_size=d,
        state_size=n,
        num_hidden_layers=2,
        conv_kernel=k,
        time_step_rank=rank,
        use_conv_bias=conv_bias,
        use_bias=bias,
        tie_word_embeddings=tied,
        residual_in_fp32=fp32,
        layer_norm_epsilon=eps,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )


def perturb_(model: torch.nn.Module, scale: float = 0.2) -> None:
    """Move every weight off its initial value, so that biases, D, A, norms all matter in the comparison."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def hf_greedy(hf, prompt: torch.Tensor) -> torch.Tensor:
    out = hf.generate(
        prompt, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=None
    )
    assert out.shape == (prompt.shape[0], prompt.shape[1] + NEW_TOKENS)
    return out


def compare(hf, mk: MambaLMHeadModel, vocab: int) -> None:
    ids = torch.randint(0, vocab, (2, 40))
    with torch.no_grad():
        want = hf(ids).logits
        got = mk(ids)
    assert got.shape[-1] == mk.config.vocab_size_padded and want.shape[-1] == vocab
    diff = (got[..., :vocab] - want).abs().max().item()
    assert diff <= TOL, diff
    prompt = ids[:, :6]
    assert torch.equal(mk.generate(prompt, NEW_TOKENS, temperature=0), hf_greedy(hf, prompt))


@pytest.mark.parametrize("name", list(CASES))
def test_transformers_checkpoint_loads_in_mambakit(name, tmp_path):
    case = CASES[name]
    hf = transformers.MambaForCausalLM(hf_config(case))
    perturb_(hf)
    hf.eval().save_pretrained(tmp_path)
    mk = MambaLMHeadModel.from_pretrained(tmp_path).eval()
    assert mk.config.norm_epsilon == case[9] and mk.config.residual_in_fp32 == case[8]
    assert mk.config.tie_embeddings == case[7]
    compare(hf, mk, case[6])


@pytest.mark.parametrize("name", list(CASES))
def test_mambakit_hf_export_loads_in_transformers(name, tmp_path):
    d, n, k, rank, conv_bias, bias, vocab, tied, fp32, eps = CASES[name]
    cfg = MambaConfig(
        d_model=d,
        n_layer=2,
        vocab_size=vocab,
        d_state=n,
        d_conv=k,
        dt_rank=rank,
        conv_bias=conv_bias,
        bias=bias,
        tie_embeddings=tied,
        residual_in_fp32=fp32,
        norm_epsilon=eps,
    )
    mk = MambaLMHeadModel(cfg)
    perturb_(mk)
    mk.eval().save_pretrained(tmp_path, format="hf")
    hf = transformers.MambaForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.layer_norm_epsilon == eps and hf.config.residual_in_fp32 == fp32
    assert hf.config.vocab_size == vocab and hf.config.tie_word_embeddings == tied
    compare(hf, mk, vocab)
    # and back again: the HF export reloads in mambakit to the same config and logits
    back = MambaLMHeadModel.from_pretrained(tmp_path).eval()
    assert back.config == cfg
    ids = torch.randint(0, vocab, (1, 10))
    with torch.no_grad():
        assert torch.equal(back(ids)[..., :vocab], mk(ids)[..., :vocab])


def test_state_spaces_layout_checkpoint(tmp_path):
    """An official-layout directory (config.json with ssm_cfg, pytorch_model.bin, padded vocabulary, both
    embedding and head stored), written by hand from a transformers model, loads and matches it."""
    vocab, padded = 101, 104
    hf = transformers.MambaForCausalLM(hf_config(CASES["s4-k2-rank3-noconvbias-v101"]))
    perturb_(hf)
    hf.eval()
    state = {}
    for name, t in hf.state_dict().items():
        if name == "backbone.embeddings.weight":
            t = torch.cat([t, torch.randn(padded - vocab, t.shape[1])])  # official padding rows
            state["backbone.embedding.weight"] = t
            state["lm_head.weight"] = t
        elif name != "lm_head.weight":
            state[name] = t
    torch.save(state, tmp_path / "pytorch_model.bin")
    official = {
        "d_model": 32,
        "n_layer": 2,
        "vocab_size": vocab,
        "ssm_cfg": {"d_state": 4, "d_conv": 2, "expand": 2, "dt_rank": 3, "conv_bias": False},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
    }
    (tmp_path / "config.json").write_text(json.dumps(official))
    mk = MambaLMHeadModel.from_pretrained(tmp_path).eval()
    assert mk.backbone.embedding.weight.shape == (padded, 32)
    ids = torch.randint(0, vocab, (2, 30))
    with torch.no_grad():
        diff = (mk(ids)[..., :vocab] - hf(ids).logits).abs().max().item()
    assert diff <= TOL
