"""The inference cache as a value: chunked prefill, prefix caching, beam search, speculative decoding and a
slot pool, each checked against running the model from scratch; plus copies and storage."""

import pytest
import torch

from mambakit import InferenceCache, MambaConfig, MambaLMHeadModel
from mambakit.errors import CheckpointError, ConfigError, ShapeError

VOCAB = 29


def _model(kind: str) -> MambaLMHeadModel:
    if kind == "mamba":
        config = MambaConfig(d_model=16, n_layer=2, vocab_size=VOCAB, d_state=4)
    elif kind == "mamba2":
        config = MambaConfig(d_model=16, n_layer=2, vocab_size=VOCAB, d_state=8, mixer="mamba2",
                             mixer_cfg={"headdim": 4, "ngroups": 2, "chunk_size": 4})
    elif kind == "mamba3":
        config = MambaConfig(d_model=16, n_layer=2, vocab_size=VOCAB, d_state=8, mixer="mamba3",
                             mixer_cfg={"headdim": 8, "chunk_size": 4, "is_mimo": True, "mimo_rank": 2})
    else:
        config = MambaConfig(d_model=16, n_layer=2, vocab_size=VOCAB, mixer="attention",
                             mixer_cfg={"n_heads": 2})
    model = MambaLMHeadModel(config, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model.eval()


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _last_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids)[:, -1]


KINDS = ["mamba", "mamba2", "mamba3", "attention"]
# their forward continues a filled cache (attention's forward starts one)
CONTINUING = ["mamba", "mamba2", "mamba3"]


@pytest.mark.parametrize("kind", CONTINUING)
@pytest.mark.parametrize("pieces", [(1,), (3, 4), (5, 6, 11)])
def test_chunked_prefill_equals_whole_prompt(kind, pieces):
    model = _model(kind)
    ids = _ids(2, 17)
    whole = model(ids)
    cache = model.allocate_inference_cache(2)
    bounds = [0, *pieces, ids.shape[1]]
    spans = zip(bounds[:-1], bounds[1:], strict=True)
    got = torch.cat([model(ids[:, a:b], state=cache) for a, b in spans], 1)
    assert torch.allclose(got, whole, atol=1e-10)
    nxt = torch.tensor([3, 4])
    assert torch.allclose(model.step(nxt, cache), _last_logits(model, torch.cat([ids, nxt[:, None]], 1)),
                          atol=1e-10)


@pytest.mark.parametrize("kind", CONTINUING)
def test_prefix_cache_clone_serves_several_suffixes(kind):
    model = _model(kind)
    prefix = _ids(1, 9, seed=1)
    shared = model.allocate_inference_cache(1)
    model(prefix, state=shared)
    before = shared.clone()
    for seed in (2, 3):
        suffix = _ids(1, 5, seed=seed)
        cache = shared.clone()
        got = model(suffix, state=cache)[:, -1]
        assert torch.allclose(got, _last_logits(model, torch.cat([prefix, suffix], 1)), atol=1e-10)
    for layer_before, layer_now in zip(before, shared, strict=True):  # the shared prefix state is untouched
        for name in layer_before:
            assert torch.equal(layer_before[name], layer_now[name]), name


@pytest.mark.parametrize("kind", KINDS)
def test_beam_search_reorder_follows_each_beams_parent(kind):
    model = _model(kind)
    beams = _ids(3, 6, seed=4)
    cache = model.allocate_inference_cache(3)
    model(beams, state=cache)
    parents = [2, 0, 2]
    tokens = torch.tensor([5, 6, 7])
    cache.reorder(parents)
    got = model.step(tokens, cache)
    expect = _last_logits(model, torch.cat([beams[parents], tokens[:, None]], 1))
    assert torch.allclose(got, expect, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_speculative_rollback_restores_the_saved_state(kind):
    model = _model(kind)
    prompt = _ids(1, 8, seed=5)
    cache = model.allocate_inference_cache(1)
    model(prompt, state=cache)
    saved = cache.clone()
    for t in (1, 2, 3):  # a draft of three tokens, then rejected
        model.step(torch.tensor([t]), cache)
    cache.copy_(saved)
    accepted = torch.tensor([9])
    got = model.step(accepted, cache)
    assert torch.allclose(got, _last_logits(model, torch.cat([prompt, accepted[:, None]], 1)), atol=1e-10)


@pytest.mark.parametrize("kind", CONTINUING)
def test_slot_pool_select_and_write_back(kind):
    """A pool of 4 slots; two requests prefilled alone, written into slots 3 and 1, stepped together."""
    model = _model(kind)
    pool = model.allocate_inference_cache(4)
    prompts = [_ids(1, 7, seed=6), _ids(1, 4, seed=7)]
    slots = [3, 1]
    for prompt, slot in zip(prompts, slots, strict=True):
        one = model.allocate_inference_cache(1)
        model(prompt, state=one)
        pool.copy_(one, rows=[slot])
    active = pool.select(slots)
    tokens = torch.tensor([2, 8])
    got = model.step(tokens, active)
    pool.copy_(active, rows=slots)
    for i, prompt in enumerate(prompts):
        expect = _last_logits(model, torch.cat([prompt, tokens[i : i + 1, None]], 1))
        assert torch.allclose(got[i], expect[0], atol=1e-10)
    for name, t in pool[0].items():  # untouched slots stay zero
        assert not t[0].any() and not t[2].any(), name
    assert torch.equal(pool.select(slots)[1]["ssm_state"], active[1]["ssm_state"])


def test_concat_joins_rows_in_order():
    model = _model("mamba2")
    a, b = model.allocate_inference_cache(1), model.allocate_inference_cache(2)
    model(_ids(1, 5, seed=8), state=a)
    model(_ids(2, 5, seed=9), state=b)
    joined = InferenceCache.concat([a, b])
    assert joined.batch_size == 3
    assert torch.equal(joined.select([0])[0]["ssm_state"], a[0]["ssm_state"])
    assert torch.equal(joined.select([1, 2])[1]["conv_state"], b[1]["conv_state"])


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_round_trip(tmp_path, kind):
    model = _model(kind)
    prompt = _ids(2, 6, seed=10)
    cache = model.allocate_inference_cache(2)
    model(prompt, state=cache)
    path = tmp_path / "cache.safetensors"
    cache.save(path)
    loaded = InferenceCache.load(path)
    assert len(loaded) == len(cache) and loaded.batch_size == 2
    for mine, theirs in zip(cache, loaded, strict=True):   # bit for bit
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    tokens = torch.tensor([1, 2])
    # (equal up to rounding: the loaded tensors' memory alignment may pick other vectorised paths)
    assert torch.allclose(model.step(tokens, loaded), model.step(tokens, cache), rtol=0, atol=1e-12)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write leaves no temporary file


def test_load_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not an InferenceCache"):
        InferenceCache.load(other)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        InferenceCache.load(garbage)


def test_bad_rows_and_shapes_are_named():
    model = _model("mamba")
    cache = model.allocate_inference_cache(2)
    with pytest.raises(ConfigError, match=r"rows.*\[0, 2\).*\[2\]"):
        cache.select([2])
    with pytest.raises(ConfigError, match="rows.*integer"):
        cache.select(torch.tensor([True, False]))
    with pytest.raises(ConfigError, match="reorder keeps the batch size 2"):
        cache.reorder([0])
    with pytest.raises(ShapeError, match="expected 1 rows, got 2"):
        cache.copy_(cache.clone(), rows=[0])
    with pytest.raises(ShapeError, match="same batch size"):
        InferenceCache([{"a": torch.zeros(2, 3)}, {"a": torch.zeros(3, 3)}])
    attention = _model("attention")
    c1, c2 = attention.allocate_inference_cache(1), attention.allocate_inference_cache(1)
    attention(_ids(1, 3), state=c1)
    with pytest.raises(ConfigError, match="length.*differs"):
        InferenceCache.concat([c1, c2])
