"""Configs and models shared by the models' test files."""

import torch

from mambakit import MambaConfig, MambaLMHeadModel

VOCAB = 37  # the Mamba-2 tests' vocabulary (padded to 40)
IDS = torch.tensor([[1, 5, 44, 0, 7, 7, 3]])  # token ids of the checkpoint tests' vocabulary (45)


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


def nondefault_config() -> MambaConfig:
    """A Mamba-1 config with every field off its default."""
    return MambaConfig(
        d_model=24,
        n_layer=3,
        vocab_size=77,
        d_state=4,
        d_conv=2,
        expand=3,
        dt_rank=5,
        dt_min=2e-3,
        dt_max=0.2,
        dt_init_floor=1e-3,
        conv_bias=False,
        bias=True,
        residual_in_fp32=False,
        pad_vocab_size_multiple=16,
        tie_embeddings=False,
        norm_epsilon=1e-6,
    )


def nondefault_mamba2_config() -> MambaConfig:
    """A Mamba-2 config with the fields and most Mamba-2 options off their defaults."""
    return MambaConfig(
        d_model=24, n_layer=3, vocab_size=77, d_state=6, d_conv=3, expand=3, dt_min=2e-3, dt_max=0.2,
        dt_init_floor=1e-3, conv_bias=False, bias=True, residual_in_fp32=False, pad_vocab_size_multiple=16,
        tie_embeddings=False, norm_epsilon=1e-6, mixer="mamba2",
        mixer_cfg={"headdim": 8, "ngroups": 3, "chunk_size": 7, "dt_limit": (0.01, 5.0), "norm_eps": 1e-6},
    )


def tiny_config(**kw) -> MambaConfig:
    """The checkpoint tests' model: vocabulary 45, padded to 48."""
    base = dict(d_model=16, n_layer=2, vocab_size=45, d_state=4)
    base.update(kw)
    return MambaConfig(**base)


def perturbed_model() -> MambaLMHeadModel:
    """A :func:`tiny_config` model with its weights moved off their initial values."""
    m = MambaLMHeadModel(tiny_config())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def same_logits(a: MambaLMHeadModel, b: MambaLMHeadModel) -> bool:
    with torch.no_grad():
        return torch.equal(a(IDS), b(IDS))
