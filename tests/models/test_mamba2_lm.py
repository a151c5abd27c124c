"""The Mamba-2 language model: config (defaults, three JSON forms, validation naming the field), prefill +
steps == forward, generation, initialisation, checkpoints in both layouts, and checkpoints of the wrong
Mamba kind."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import CheckpointError, ConfigError
from mambakit.layers.mamba2 import Mamba2Block
from mambakit.models.config import MAMBA2_DEFAULTS

VOCAB = 37


def m2_config(**kw) -> MambaConfig:
    options = {"headdim": 4, "ngroups": 2, "chunk_size": 5}
    options.update(kw.pop("mixer_cfg", {}))
    base = dict(d_model=16, n_layer=2, vocab_size=VOCAB, d_state=8, mixer="mamba2", mixer_cfg=options)
    base.update(kw)
    return MambaConfig(**base)


def m2_model(dtype=torch.float32, seed=0, **kw) -> MambaLMHeadModel:
    model = MambaLMHeadModel(m2_config(**kw), dtype=dtype, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # off the initial values, so that D, biases and norm weights all matter
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    return model.eval()


def ids_(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ config
def test_defaults_are_the_official_mamba2_ones():
    c = MambaConfig(d_model=64, n_layer=2, vocab_size=50, mixer="mamba2")
    assert c.d_state == 128 and c.mixer_cfg == MAMBA2_DEFAULTS  # filled in
    assert (c.mixer_cfg["headdim"], c.mixer_cfg["ngroups"], c.mixer_cfg["chunk_size"]) == (64, 1, 256)
    assert c.mixer_cfg["dt_limit"] == (0.0, math.inf) and c.mixer_cfg["A_init_range"] == (1.0, 16.0)
    assert MambaConfig(d_model=64, n_layer=2, vocab_size=50).d_state == 16  # Mamba-1 keeps its default
    assert MambaConfig(d_model=64, n_layer=2, vocab_size=50, mixer="s4d").d_state == 16
    block = MambaLMHeadModel(c).backbone.layers[0].mixer
    assert isinstance(block, Mamba2Block)
    assert (block.nheads, block.headdim, block.ngroups, block.d_state) == (2, 64, 1, 128)
    # a given option overrides its default; the others are still filled in
    c2 = MambaConfig(d_model=64, n_layer=2, vocab_size=50, mixer="mamba2", mixer_cfg={"headdim": 32})
    assert c2.mixer_cfg == {**MAMBA2_DEFAULTS, "headdim": 32}


def test_official_mamba2_130m_style_config():
    # the shape of state-spaces/mamba2-130m's config.json: ssm_cfg names only the layer
    official = {
        "d_model": 768,
        "d_intermediate": 0,
        "n_layer": 24,
        "vocab_size": 50277,
        "ssm_cfg": {"layer": "Mamba2"},
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 16,
        "tie_embeddings": True,
    }
    c = MambaConfig.from_state_spaces_dict(official)
    assert c.mixer == "mamba2" and c.d_state == 128 and c.mixer_cfg == MAMBA2_DEFAULTS
    assert c.vocab_size_padded == 50288 and c.d_inner // c.mixer_cfg["headdim"] == 24


def _nondefault() -> MambaConfig:
    return MambaConfig(
        d_model=24, n_layer=3, vocab_size=77, d_state=6, d_conv=3, expand=3, dt_min=2e-3, dt_max=0.2,
        dt_init_floor=1e-3, conv_bias=False, bias=True, residual_in_fp32=False, pad_vocab_size_multiple=16,
        tie_embeddings=False, norm_epsilon=1e-6, mixer="mamba2",
        mixer_cfg={"headdim": 8, "ngroups": 3, "chunk_size": 7, "dt_limit": (0.01, 5.0), "norm_eps": 1e-6},
    )


def test_flat_and_state_spaces_round_trips():
    c = _nondefault()
    assert MambaConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c  # lists come back as tuples
    d = json.loads(json.dumps(c.to_state_spaces_dict()))
    ssm = d["ssm_cfg"]
    assert ssm["layer"] == "Mamba2" and "dt_rank" not in ssm and "mixer" not in d
    assert (ssm["headdim"], ssm["ngroups"], ssm["chunk_size"], ssm["d_state"]) == (8, 3, 7, 6)
    assert d["mixer_cfg"] == {"norm_eps": 1e-6}  # mamba_ssm hard-codes 1e-5: ours is stored beside
    assert MambaConfig.from_state_spaces_dict(d) == c
    # the official defaults write no mambakit-only keys
    plain = MambaConfig(d_model=32, n_layer=2, vocab_size=50, mixer="mamba2").to_state_spaces_dict()
    assert not {"mixer", "mixer_cfg", "norm_epsilon"} & set(plain)


def test_hf_round_trip_and_transformers_reads_it():
    transformers = pytest.importorskip("transformers")
    c = _nondefault()
    d = json.loads(json.dumps(c.to_hf_dict()))
    assert d["model_type"] == "mamba2" and d["architectures"] == ["Mamba2ForCausalLM"]
    assert MambaConfig.from_hf_dict(d) == c
    hf = transformers.Mamba2Config(**{k: v for k, v in d.items() if k != "architectures"})
    assert (hf.num_heads, hf.head_dim, hf.n_groups, hf.state_size, hf.chunk_size) == (9, 8, 3, 6, 7)
    assert hf.hidden_size * hf.expand == 72 and tuple(hf.time_step_limit) == (0.01, 5.0)
    assert hf.tie_word_embeddings is False and hf.use_bias is True and hf.layer_norm_epsilon == 1e-6


def test_hf_config_written_by_transformers_is_read():
    transformers = pytest.importorskip("transformers")
    hf = transformers.Mamba2Config(
        vocab_size=99, hidden_size=32, num_heads=16, head_dim=4, n_groups=4, state_size=12,
        num_hidden_layers=2, conv_kernel=3, chunk_size=32, layer_norm_epsilon=1e-6,
    )
    d = json.loads(hf.to_json_string())  # time_step_limit's inf is written as {"__float__": "Infinity"}
    c = MambaConfig.from_hf_dict(d)
    assert (c.d_model, c.d_state, c.n_layer, c.d_conv, c.vocab_size) == (32, 12, 2, 3, 99)
    assert c.mixer_cfg["dt_limit"] == (0.0, math.inf) and c.mixer_cfg["norm_eps"] == 1e-6
    assert (c.mixer_cfg["headdim"], c.mixer_cfg["ngroups"], c.mixer_cfg["chunk_size"]) == (4, 4, 32)
    assert c.tie_embeddings is False  # transformers' Mamba2 default


@pytest.mark.parametrize(
    "options,key",
    [
        ({"headdim": 5}, "headdim"),  # does not divide d_ssm = 32
        ({"headdim": 4, "ngroups": 3}, "ngroups"),  # does not divide 8 heads
        ({"chunk_size": 0}, "chunk_size"),
        ({"headdim": 2.5}, "headdim"),
        ({"d_ssm": 48}, "d_ssm"),  # more than d_inner
        ({"d_ssm": 12, "headdim": 8}, "headdim"),
        ({"rmsnorm": 1}, "rmsnorm"),
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"A_init_range": (16.0, 1.0)}, "A_init_range"),
        ({"dt_limit": (0.1,)}, "dt_limit"),
        ({"dt_limit": (-1.0, 1.0)}, "dt_limit"),
        ({"head_dim": 4}, "unknown key.*head_dim"),
    ],
)
def test_bad_mamba2_options_name_the_field(options, key):
    with pytest.raises(ConfigError, match=rf"MambaConfig.mixer_cfg.*{key}") as err:
        MambaConfig(d_model=16, n_layer=1, vocab_size=10, mixer="mamba2", mixer_cfg=options)
    value = next(iter(options.values())) if len(options) == 1 else options[key]
    if not key.startswith("unknown"):
        assert repr(value) in str(err.value)


def test_dt_rank_is_not_a_mamba2_option():
    with pytest.raises(ConfigError, match="MambaConfig.dt_rank.*mamba2"):
        MambaConfig(d_model=16, n_layer=1, vocab_size=10, mixer="mamba2", dt_rank=4)


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda d: d.update(num_heads=3), "num_heads.*headdim mismatch"),
        (lambda d: d.update(n_groups=3), "n_groups"),
        (lambda d: d.update(rms_norm=False), "rms_norm"),
        (lambda d: d.update(hidden_act="gelu"), "hidden_act"),
        (lambda d: d.update(time_step_limit=[0.0]), "time_step_limit"),
        (lambda d: d.update(num_head=2), "unknown key.*num_head"),
        (lambda d: d.update(model_type="mamba"), r"model_type 'mamba'.*keys of model_type 'mamba2'"),
    ],
)
def test_hf_bad_mamba2_keys(mutate, key):
    d = m2_config().to_hf_dict()
    mutate(d)
    with pytest.raises(ConfigError, match=key):
        MambaConfig.from_hf_dict(d)


def test_mamba1_hf_config_relabelled_mamba2_is_named():
    d = MambaConfig(d_model=16, n_layer=2, vocab_size=50).to_hf_dict()
    d["model_type"] = "mamba2"
    message = r"intermediate_size.*model_type 'mamba2'.*keys of model_type 'mamba'"
    with pytest.raises(ConfigError, match=message):
        MambaConfig.from_hf_dict(d)


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda d: d["ssm_cfg"].update(dt_rank=4), r"\['dt_rank'\] are Mamba-1 options.*layer 'Mamba2'"),
        (lambda d: d["ssm_cfg"].update(layer="Mamba3"), "ssm_cfg.layer.*'Mamba3'"),
        (lambda d: d["ssm_cfg"].pop("layer"), r"Mamba-2 options.*ssm_cfg.layer 'Mamba1'"),
        (lambda d: d["ssm_cfg"].update(conv_init=0.5), "conv_init"),
        (lambda d: d["ssm_cfg"].update(headdim=3), r"mixer_cfg\['headdim'\]"),
        (lambda d: d.update(mixer="s4d"), "config.mixer.*'s4d'"),
    ],
)
def test_state_spaces_bad_mamba2_keys(mutate, key):
    d = m2_config().to_state_spaces_dict()
    mutate(d)
    with pytest.raises(ConfigError, match=key):
        MambaConfig.from_state_spaces_dict(d)


@pytest.mark.parametrize(
    "options,key",
    [
        ({"d_ssm": 16}, "d_ssm"),
        ({"rmsnorm": False}, "rmsnorm"),
        ({"norm_before_gate": True}, "norm_before_gate"),
        ({"D_has_hdim": True}, "D_has_hdim"),
        ({"norm_eps": 1e-6}, "norm_eps.*norm_epsilon"),
    ],
)
def test_what_the_hf_format_cannot_hold_is_refused(options, key):
    with pytest.raises(ConfigError, match=rf"mixer_cfg\['{key}"):
        m2_config(mixer_cfg=options).to_hf_dict()


# ------------------------------------------------------------------------------------- forward and cache
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_prefill_then_steps_equals_forward(dtype, tol):
    model = m2_model(dtype=dtype)
    ids = ids_(2, 14)
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_inference_cache(2)
        assert cache[0]["ssm_state"].shape == (2, 8, 4, 8) and cache[0]["ssm_state"].dtype == dtype
        assert cache[0]["conv_state"].shape == (2, 32 + 2 * 2 * 8, 4)
        prefix = model(ids[:, :7], state=cache)  # longer than one chunk (5), not a multiple of it
        steps = [model.step(ids[:, t], cache) for t in range(7, 14)]
    torch.testing.assert_close(prefix, full[:, :7], rtol=0, atol=tol)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 7:], rtol=0, atol=tol)


def test_greedy_generation_equals_repeated_full_forward():
    model = m2_model(dtype=torch.float64, mixer_cfg={"d_ssm": 24, "headdim": 6, "ngroups": 1})  # gated MLP
    prompt = ids_(2, 5, seed=3)
    out = model.generate(prompt, 12, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            nxt = model(seq)[:, -1, :VOCAB].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)


def test_initialisation_keeps_the_mamba2_parameters():
    """The LM's reset_parameters re-draws Linear biases, the embedding and out_proj, but must leave the
    block's A_log, dt_bias and D as the block initialised them."""
    cfg = m2_config(d_model=32, n_layer=3, bias=True, dt_min=0.01, dt_max=0.05, dt_init_floor=1e-4,
                    mixer_cfg={"A_init_range": (2.0, 4.0), "headdim": 4})
    model = MambaLMHeadModel(cfg, generator=torch.Generator().manual_seed(0))
    for layer in model.backbone.layers:
        mixer = layer.mixer
        A = torch.exp(mixer.A_log.detach())
        assert A.min() >= 2.0 - 1e-5 and A.max() <= 4.0 + 1e-5 and A.std() > 0
        dt = torch.nn.functional.softplus(mixer.dt_bias.detach())
        assert dt.min() >= 0.01 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
        assert torch.equal(mixer.D.detach(), torch.ones_like(mixer.D))
        assert torch.equal(mixer.norm.weight.detach(), torch.ones_like(mixer.norm.weight))
        assert torch.all(mixer.in_proj.bias == 0) and torch.all(mixer.out_proj.bias == 0)
        # out_proj: Kaiming-uniform bound 1/sqrt(fan_in), then the 1/sqrt(n_layer) residual rescaling
        bound = 1 / math.sqrt(mixer.out_proj.in_features) / math.sqrt(3)
        assert mixer.out_proj.weight.abs().max() <= bound + 1e-6
        assert mixer.out_proj.weight.abs().max() > 0.8 * bound
    no_decay = model.no_weight_decay_param_names()
    for name in ("A_log", "dt_bias", "D", "norm.weight", "in_proj.bias"):
        assert f"backbone.layers.1.mixer.{name}" in no_decay
    assert "backbone.layers.1.mixer.in_proj.weight" not in no_decay


def test_training_step_reaches_every_parameter():
    model = m2_model().train()
    ids = ids_(2, 12)
    logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits[..., :VOCAB].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name != "backbone.embedding.weight":
            assert p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("format", ["mambakit", "hf"])
def test_checkpoint_round_trip(tmp_path, format):
    model = m2_model(tie_embeddings=False)
    model.save_pretrained(tmp_path, format=format)
    stored = load_file(tmp_path / "model.safetensors")
    for name, shape in (("dt_bias", (8,)), ("A_log", (8,)), ("D", (8,)), ("norm.weight", (32,))):
        assert stored[f"backbone.layers.1.mixer.{name}"].shape == shape
    config = json.loads((tmp_path / "config.json").read_text())
    if format == "hf":
        assert config["model_type"] == "mamba2" and stored["backbone.embeddings.weight"].shape == (VOCAB, 16)
    else:
        assert config["ssm_cfg"]["layer"] == "Mamba2"
        assert stored["backbone.embedding.weight"].shape == (40, 16)
    back = MambaLMHeadModel.from_pretrained(tmp_path)
    assert back.config == model.config
    with torch.no_grad():
        assert torch.equal(back(ids_(1, 9))[..., :VOCAB], model(ids_(1, 9))[..., :VOCAB])


def test_gated_mlp_variant_round_trips_in_the_state_spaces_layout(tmp_path):
    model = m2_model(mixer_cfg={"d_ssm": 24, "headdim": 6, "ngroups": 2, "norm_before_gate": True,
                                "D_has_hdim": True, "norm_eps": 1e-6})
    model.save_pretrained(tmp_path)
    back = MambaLMHeadModel.from_pretrained(tmp_path)
    assert back.config == model.config and back.backbone.layers[0].mixer.d_mlp == 8
    with torch.no_grad():
        assert torch.equal(back(ids_(1, 9)), model(ids_(1, 9)))
    with pytest.raises(ConfigError, match="d_ssm"):
        model.save_pretrained(tmp_path / "hf", format="hf")


def _mamba1_twin() -> MambaLMHeadModel:
    return MambaLMHeadModel(MambaConfig(d_model=16, n_layer=2, vocab_size=VOCAB, d_state=8))


@pytest.mark.parametrize("format,field", [("mambakit", "config.ssm_cfg.layer"), ("hf", "config.model_type")])
def test_mamba2_checkpoint_loaded_as_mamba1_names_the_field(tmp_path, format, field):
    m2_model().save_pretrained(tmp_path, format=format)
    mamba1_config = (
        _mamba1_twin().config.to_hf_dict() if format == "hf" else _mamba1_twin().config.to_state_spaces_dict()
    )
    (tmp_path / "config.json").write_text(json.dumps(mamba1_config))  # Mamba-1 config, Mamba-2 weights
    with pytest.raises(CheckpointError, match=rf"{field} makes this a Mamba-1 model.*Mamba-2 checkpoint"):
        MambaLMHeadModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("format,field", [("mambakit", "config.ssm_cfg.layer"), ("hf", "config.model_type")])
def test_mamba1_checkpoint_loaded_as_mamba2_names_the_field(tmp_path, format, field):
    _mamba1_twin().save_pretrained(tmp_path, format=format)
    cfg = m2_config()
    (tmp_path / "config.json").write_text(
        json.dumps(cfg.to_hf_dict() if format == "hf" else cfg.to_state_spaces_dict())
    )
    with pytest.raises(CheckpointError, match=rf"{field} makes this a Mamba-2 model.*Mamba-1 checkpoint"):
        MambaLMHeadModel.from_pretrained(tmp_path)


def test_relabelled_configs_are_refused_with_the_field(tmp_path):
    m2_model().save_pretrained(tmp_path / "m2", format="hf")
    path = tmp_path / "m2" / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "model_type": "mamba"}))
    with pytest.raises(CheckpointError, match="model_type 'mamba'.*keys of model_type 'mamba2'"):
        MambaLMHeadModel.from_pretrained(tmp_path / "m2")
    m2_model().save_pretrained(tmp_path / "ss")
    path = tmp_path / "ss" / "config.json"
    config = json.loads(path.read_text())
    del config["ssm_cfg"]["layer"]
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="Mamba-2 options.*ssm_cfg.layer 'Mamba1'"):
        MambaLMHeadModel.from_pretrained(tmp_path / "ss")


def test_mismatched_mamba2_weights(tmp_path):
    m2_model().save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["backbone.layers.0.mixer.dt_bias"] = torch.zeros(4)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'backbone.layers.0.mixer.dt_bias'.*expected shape \(8,\)"):
        MambaLMHeadModel.from_pretrained(tmp_path)
