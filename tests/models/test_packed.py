"""Packed and padded sequences in the blocks and the language model: a packed row (given as seq_idx,
cu_seqlens or position_ids) equals its documents run alone, logits and gradients; the state after a packed
prefill is the last document's; a left-padded batch generates, row by row, what each prompt generates
alone; bad packing arguments are named errors."""

import pytest
import torch

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import ConfigError, ShapeError
from mambakit.layers import CausalSelfAttention, Mamba2Block, MambaBlock

VOCAB = 31
KINDS = ["mamba", "mamba2", "mamba3", "mamba3-mimo", "hybrid", "parallel", "shared"]


def _model(kind: str, dtype=torch.float32) -> MambaLMHeadModel:
    if kind == "mamba":
        config = MambaConfig(d_model=16, n_layer=2, vocab_size=VOCAB, d_state=4)
    elif kind == "hybrid":   # every kind of layer, attention with grouped heads, partial RoPE and a window
        config = MambaConfig(
            d_model=16, n_layer=6, vocab_size=VOCAB, d_state=8, mixer="mamba2",
            mixer_cfg={"headdim": 4, "ngroups": 2, "chunk_size": 4},
            layer_types=["mamba2", "attention", "mlp", "mamba", "moe", "attention"],
            layer_cfg={"attention": {"n_heads": 4, "n_kv_heads": 2, "rotary_dim": 2, "sliding_window": 7},
                       "mlp": {"d_intermediate": 24},
                       "moe": {"n_experts": 3, "top_k": 2, "d_intermediate": 8}})
    elif kind == "parallel":  # Falcon-H1's attention beside Mamba-2, an inner width of its own
        config = MambaConfig(
            d_model=16, n_layer=4, vocab_size=VOCAB, d_state=8, mixer="parallel_hybrid",
            mixer_cfg={"attention": {"n_heads": 4, "n_kv_heads": 2},
                       "mamba2": {"headdim": 4, "ngroups": 2, "chunk_size": 4, "d_inner": 24}},
            layer_types=["parallel_hybrid", "mlp"] * 2, layer_cfg={"mlp": {"d_intermediate": 24}})
    elif kind == "shared":  # Zamba2's shared block, used twice, with adapters
        config = MambaConfig(
            d_model=16, n_layer=4, vocab_size=VOCAB, d_state=8, mixer="mamba2",
            mixer_cfg={"headdim": 4, "ngroups": 2, "chunk_size": 4}, layer_types=["mamba2"] * 4,
            shared_cfg={"layers": [1, 3], "attention": {"n_heads": 4}, "mlp": {"d_intermediate": 24},
                        "adapter_rank": 2, "attention_adapters": True})
    elif kind.startswith("mamba3"):
        config = MambaConfig(d_model=16, n_layer=2, vocab_size=VOCAB, d_state=8, mixer="mamba3",
                             mixer_cfg={"headdim": 8, "chunk_size": 4, "is_mimo": kind.endswith("mimo"),
                                        "mimo_rank": 2})
    else:
        config = MambaConfig(d_model=16, n_layer=2, vocab_size=VOCAB, d_state=8, mixer="mamba2",
                             mixer_cfg={"headdim": 4, "ngroups": 2, "chunk_size": 4})
    model = MambaLMHeadModel(config, dtype=dtype, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype))
    return model.eval()


def _docs(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (1, n), generator=gen) for n in lengths]


LENGTHS = [5, 1, 9, 3, 6]


def _packing_forms(lengths):
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    return {"seq_idx": seq_idx, "cu_seqlens": cu, "position_ids": position_ids}


@pytest.mark.parametrize("form", ["seq_idx", "cu_seqlens", "position_ids"])
@pytest.mark.parametrize("kind", KINDS)
def test_packed_row_equals_documents_alone(kind, form):
    model = _model(kind)
    docs = _docs(LENGTHS)
    packed = model(torch.cat(docs, 1), **{form: _packing_forms(LENGTHS)[form]})
    alone = torch.cat([model(d) for d in docs], 1)
    assert (packed - alone).abs().max() <= 1e-5
    assert (model(torch.cat(docs, 1)) - alone).abs().max() > 1e-3   # without packing, documents leak


@pytest.mark.parametrize("kind", KINDS)
def test_packed_gradients_equal_the_documents_gradients(kind):
    model = _model(kind, dtype=torch.float64).train()
    docs = _docs(LENGTHS, seed=1)
    weights = torch.randn(1, sum(LENGTHS), model.config.vocab_size_padded, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(2))
    (model(torch.cat(docs, 1), seq_idx=_packing_forms(LENGTHS)["seq_idx"]) * weights).sum().backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    start = 0
    for d in docs:
        (model(d) * weights[:, start : start + d.shape[1]]).sum().backward()
        start += d.shape[1]
    for name, p in model.named_parameters():
        assert torch.allclose(packed[name], p.grad, atol=1e-9), name


@pytest.mark.parametrize("kind", KINDS)
def test_state_after_packed_prefill_is_the_last_documents(kind):
    model = _model(kind)
    docs = _docs(LENGTHS, seed=3)
    cache = model.allocate_inference_cache(1)
    model(torch.cat(docs, 1), state=cache, cu_seqlens=_packing_forms(LENGTHS)["cu_seqlens"])
    last = model.allocate_inference_cache(1)
    model(docs[-1], state=last)
    token = torch.tensor([4])
    assert (model.step(token, cache) - model.step(token, last)).abs().max() <= 1e-5


def _blocks():
    torch.manual_seed(0)
    yield "mamba", MambaBlock(16, d_state=4, d_conv=4, expand=2, dtype=torch.float64)
    yield "mamba2", Mamba2Block(16, d_state=8, d_conv=4, expand=2, headdim=8, chunk_size=4,
                                dtype=torch.float64)
    yield "attention", CausalSelfAttention(16, n_heads=4, n_kv_heads=2, rotary_dim=2, sliding_window=6,
                                           cache_len=4, dtype=torch.float64)


@pytest.mark.parametrize("name, block", list(_blocks()), ids=lambda v: v if isinstance(v, str) else "")
def test_block_prefill_in_pieces_with_packing(name, block):
    """Chunked prefill of a packed row: pieces cut inside and between documents, from a non-empty state."""
    torch.manual_seed(4)
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    seq_idx = torch.tensor([[0] * 3 + [1] * 2 + [2] * 10 + [3] * 4, [0] * 8 + [1] + [2] * 10])
    state = block.allocate_state(2)
    block(torch.randn(2, 5, 16, dtype=torch.float64), state=state)   # the first document continues this
    whole_state = {k: v.clone() for k, v in state.items()}
    whole = block(x, state=whole_state, seq_idx=seq_idx)
    pieces = []
    for a, b in ((0, 4), (4, 10), (10, 19)):   # each piece's first position continues the state
        pieces.append(block(x[:, a:b], state=state, seq_idx=seq_idx[:, a:b]))
    assert torch.allclose(torch.cat(pieces, 1), whole, atol=1e-10)
    filled = int(state["length"]) if "length" in state else None   # a KV cache may have grown differently
    for key in state:
        mine, theirs = state[key], whole_state[key]
        if key in ("key_cache", "value_cache"):
            mine, theirs = mine[:, :, :filled], theirs[:, :, :filled]
        assert torch.equal(mine, theirs) if not mine.is_floating_point() else \
            torch.allclose(mine, theirs, atol=1e-10), key


@pytest.mark.parametrize("kind", KINDS)
def test_left_padded_batch_generates_what_each_prompt_does_alone(kind):
    model = _model(kind)
    prompts = [p[0] for p in _docs([7, 2, 11], seed=5)]
    width = max(len(p) for p in prompts)
    pad_id = 3
    ids = torch.full((len(prompts), width), pad_id)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    for sampling in ({"temperature": 0}, {"temperature": 0, "repetition_penalty": 1.5}):
        batched = model.generate(ids, 32, attention_mask=mask, **sampling)[:, width:]
        for i, p in enumerate(prompts):
            alone = model.generate(p[None], 32, **sampling)[0, len(p):]
            assert torch.equal(batched[i], alone), (i, sampling)


def test_bad_packing_arguments_are_named():
    model = _model("mamba")
    ids = torch.ones(2, 6, dtype=torch.long)
    forms = _packing_forms([2, 4])
    with pytest.raises(ConfigError, match=r"at most one of.*\['cu_seqlens', 'seq_idx'\]"):
        model(ids[:1], seq_idx=forms["seq_idx"], cu_seqlens=forms["cu_seqlens"])
    with pytest.raises(ConfigError, match="cu_seqlens.*batch 1, got 2"):
        model(ids, cu_seqlens=forms["cu_seqlens"])
    with pytest.raises(ConfigError, match="cu_seqlens.*last offset.*packed length 5"):
        model(ids[:1, :5], cu_seqlens=forms["cu_seqlens"])
    with pytest.raises(ConfigError, match="attention_mask: expected left padding"):
        model(ids, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6]))
    with pytest.raises(ConfigError, match="attention_mask: expected left padding"):
        model.generate(ids, 3, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6]))
    with pytest.raises(ShapeError, match=r"position_ids: expected shape \(2, 6\) \(that of input_ids\)"):
        model(ids, position_ids=torch.zeros(2, 5, dtype=torch.long))
    s4d = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=VOCAB, mixer="s4d"))
    with pytest.raises(ConfigError, match="seq_idx: layer 0's mixer \\(S4D\\) does not take packed"):
        s4d(ids, seq_idx=torch.zeros(2, 6, dtype=torch.long))
