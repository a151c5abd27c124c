"""Mamba-2 language model parity with transformers' Mamba2ForCausalLM (its torch path, the oracle), both
directions, and the state-spaces layout.

Tiny random models, no network: logits over the real vocabulary within 1e-4 (fp32) and identical greedy
generations of 32 new tokens, on several (heads, headdim, groups, d_state, chunk_size), with sequences that
are not a multiple of the chunk (and one shorter than it).
"""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mambakit import MambaConfig, MambaLMHeadModel  # noqa: E402

# (d_model, heads, headdim, groups, d_state, chunk_size, conv_kernel, use_bias, use_conv_bias, vocab, tied,
#  residual_in_fp32, layer_norm_epsilon)
CASES = {
    "h8-p4-g2-n6-Q5": (16, 8, 4, 2, 6, 5, 4, False, True, 61, False, True, 1e-5),
    "h4-p12-g4-n8-Q16-bias": (24, 4, 12, 4, 8, 16, 3, True, False, 50, True, False, 1e-6),
    "h2-p8-g1-n4-Q3": (8, 2, 8, 1, 4, 3, 2, False, True, 97, True, True, 1e-5),
    "h9-p4-g3-n16-Q64-expand3": (12, 9, 4, 3, 16, 64, 4, True, True, 40, False, True, 1e-5),
}
NEW_TOKENS = 32
TOL = 1e-4


def hf_config(case) -> "transformers.Mamba2Config":
    d, heads, p, g, n, q, k, bias, conv_bias, vocab, tied, fp32, eps = case
    return transformers.Mamba2Config(
        vocab_size=vocab,
        hidden_size=d,
        num_heads=heads,
        head_dim=p,
        n_groups=g,
        state_size=n,
        chunk_size=q,
        expand=heads * p // d,
        conv_kernel=k,
        use_bias=bias,
        use_conv_bias=conv_bias,
        num_hidden_layers=2,
        tie_word_embeddings=tied,
        residual_in_fp32=fp32,
        layer_norm_epsilon=eps,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )


def mk_config(case) -> MambaConfig:
    d, heads, p, g, n, q, k, bias, conv_bias, vocab, tied, fp32, eps = case
    return MambaConfig(
        d_model=d,
        n_layer=2,
        vocab_size=vocab,
        d_state=n,
        d_conv=k,
        expand=heads * p // d,
        bias=bias,
        conv_bias=conv_bias,
        tie_embeddings=tied,
        residual_in_fp32=fp32,
        norm_epsilon=eps,
        mixer="mamba2",
        mixer_cfg={"headdim": p, "ngroups": g, "chunk_size": q, "norm_eps": eps},
    )


def perturb_(model: torch.nn.Module, seed: int, scale: float = 0.2) -> None:
    """Move every weight off its initial value, so that biases, D, A, dt_bias and norms all matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def hf_greedy(hf, prompt: torch.Tensor) -> torch.Tensor:
    out = hf.generate(
        prompt, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=None
    )
    assert out.shape == (prompt.shape[0], prompt.shape[1] + NEW_TOKENS)
    return out


def compare(hf, mk: MambaLMHeadModel, vocab: int) -> float:
    """Logits on a 37-token batch (not a multiple of any chunk size here) and greedy generations agree."""
    ids = torch.randint(0, vocab, (2, 37), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = hf(ids).logits
        got = mk(ids)
    assert got.shape[-1] == mk.config.vocab_size_padded and want.shape[-1] == vocab
    diff = (got[..., :vocab] - want).abs().max().item()
    assert diff <= TOL, diff
    prompt = ids[:, :6]
    assert torch.equal(mk.generate(prompt, NEW_TOKENS, temperature=0), hf_greedy(hf, prompt))
    return diff


@pytest.mark.parametrize("name", list(CASES))
def test_transformers_mamba2_checkpoint_loads_in_mambakit(name, tmp_path):
    case = CASES[name]
    torch.manual_seed(0)
    hf = transformers.Mamba2ForCausalLM(hf_config(case))
    perturb_(hf, seed=1)
    hf.eval().save_pretrained(tmp_path)
    mk = MambaLMHeadModel.from_pretrained(tmp_path).eval()
    d, heads, p, g, n, q, k, bias, conv_bias, vocab, tied, fp32, eps = case
    assert mk.config.mixer == "mamba2" and mk.config.d_state == n and mk.config.d_conv == k
    opts = mk.config.mamba2_options
    assert (opts["headdim"], opts["ngroups"], opts["chunk_size"], opts["norm_eps"]) == (p, g, q, eps)
    assert mk.config.tie_embeddings == tied and mk.config.residual_in_fp32 == fp32
    assert mk.backbone.layers[0].mixer.nheads == heads
    compare(hf, mk, vocab)


@pytest.mark.parametrize("name", list(CASES))
def test_mambakit_mamba2_hf_export_loads_in_transformers(name, tmp_path):
    case = CASES[name]
    cfg = mk_config(case)
    mk = MambaLMHeadModel(cfg, generator=torch.Generator().manual_seed(0))
    perturb_(mk, seed=2)
    mk.eval().save_pretrained(tmp_path, format="hf")
    hf = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path).eval()
    d, heads, p, g, n, q, k, bias, conv_bias, vocab, tied, fp32, eps = case
    assert (hf.config.num_heads, hf.config.head_dim, hf.config.n_groups) == (heads, p, g)
    assert (hf.config.state_size, hf.config.chunk_size, hf.config.conv_kernel) == (n, q, k)
    assert hf.config.vocab_size == vocab and hf.config.tie_word_embeddings == tied
    assert hf.config.layer_norm_epsilon == eps and hf.config.residual_in_fp32 == fp32
    compare(hf, mk, vocab)
    # and back again: the HF export reloads in mambakit to the same config and logits
    back = MambaLMHeadModel.from_pretrained(tmp_path).eval()
    assert back.config == cfg
    ids = torch.randint(0, vocab, (1, 10))
    with torch.no_grad():
        assert torch.equal(back(ids)[..., :vocab], mk(ids)[..., :vocab])


def test_state_spaces_mamba2_layout_checkpoint(tmp_path):
    """An official-layout Mamba-2 directory (config.json with ssm_cfg {"layer": "Mamba2", ...},
    pytorch_model.bin, padded vocabulary, embedding and head both stored), written by hand from a transformers
    model, loads and matches it; mamba_ssm's gated norm eps is 1e-5, so the HF model uses 1e-5 too."""
    case = CASES["h8-p4-g2-n6-Q5"]
    vocab, padded = 61, 64
    hf = transformers.Mamba2ForCausalLM(hf_config(case))
    perturb_(hf, seed=3)
    hf.eval()
    state = {}
    for name, t in hf.state_dict().items():
        if name == "backbone.embeddings.weight":
            t = torch.cat([t, torch.randn(padded - vocab, t.shape[1])])  # official padding rows
            state["backbone.embedding.weight"] = t
        elif name == "lm_head.weight":
            state[name] = torch.cat([t, torch.randn(padded - vocab, t.shape[1])])
        else:
            state[name] = t
    torch.save(state, tmp_path / "pytorch_model.bin")
    official = {
        "d_model": 16,
        "d_intermediate": 0,
        "n_layer": 2,
        "vocab_size": vocab,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 6, "headdim": 4, "ngroups": 2, "chunk_size": 5},
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": False,
    }
    (tmp_path / "config.json").write_text(json.dumps(official))
    mk = MambaLMHeadModel.from_pretrained(tmp_path).eval()
    assert mk.config.mixer == "mamba2" and mk.backbone.embedding.weight.shape == (padded, 16)
    ids = torch.randint(0, vocab, (2, 30))
    with torch.no_grad():
        diff = (mk(ids)[..., :vocab] - hf(ids).logits).abs().max().item()
    assert diff <= TOL
    # the state-spaces export of it reloads to the same model
    mk.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert saved["ssm_cfg"]["layer"] == "Mamba2" and "mixer" not in saved and "mixer_cfg" not in saved
    back = MambaLMHeadModel.from_pretrained(tmp_path / "again")
    assert back.config == mk.config
    with torch.no_grad():
        assert torch.equal(back(ids), mk(ids))
