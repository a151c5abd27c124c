"""Generation: greedy equals re-running the full model (Mamba-1 and Mamba-2), reproducible sampling,
repetition penalty, eos, streamers, training mode kept, bad arguments named."""


import pytest
import torch
from model_helpers import ids_, m2_model

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import ConfigError, DTypeError
from mambakit.models import SamplingOptions, TokenIdError, generate, generate_tokens

VOCAB = 37  # padded to 40: the padding logits must never be sampled


@pytest.fixture(scope="module")
def model() -> MambaLMHeadModel:
    torch.manual_seed(1)
    m = MambaLMHeadModel(MambaConfig(d_model=32, n_layer=2, vocab_size=VOCAB, d_state=4))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
        m.lm_head.weight[VOCAB:] = 50.0  # padding rows would win every argmax if they were sampled
    return m.eval()


def test_greedy_equals_rerunning_the_full_model(model):
    prompt = torch.randint(0, VOCAB, (2, 5))
    out = model.generate(prompt, 12, temperature=0)
    assert out.shape == (2, 17) and out.dtype == torch.long and torch.equal(out[:, :5], prompt)
    seq = prompt
    with torch.no_grad():
        for _ in range(12):  # the slow way: the whole sequence through forward at every step
            nxt = model(seq)[:, -1, :VOCAB].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)
    assert torch.equal(model.generate(prompt, 12, temperature=0), out)  # deterministic
    assert int(out.max()) < VOCAB


def test_sampling_is_reproducible_with_a_generator(model):
    prompt = torch.randint(0, VOCAB, (3, 4))
    a = model.generate(prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = model.generate(prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(7))
    c = model.generate(prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.max()) < VOCAB
    greedy = model.generate(prompt, 10, temperature=0)
    assert torch.equal(
        model.generate(prompt, 10, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(1)),
        greedy,
    )
    assert torch.equal(
        model.generate(prompt, 10, temperature=0.7, top_p=1e-6, generator=torch.Generator().manual_seed(1)),
        greedy,
    )


def test_repetition_penalty_discourages_repeats(model):
    prompt = torch.randint(0, VOCAB, (2, 3))
    plain = model.generate(prompt, 20, temperature=0)
    penalised = model.generate(prompt, 20, temperature=0, repetition_penalty=1e4)
    for row in penalised:  # with a huge penalty, no token repeats while unseen tokens remain
        assert len(set(row.tolist())) == len(row)
    assert not torch.equal(plain, penalised)


def test_eos_stops_and_pads(model):
    prompt = torch.randint(0, VOCAB, (2, 4))
    free = model.generate(prompt, 8, temperature=0)
    eos = int(free[0, 4])  # row 0's first new token
    out = model.generate(prompt, 8, temperature=0, eos_token_id=eos)
    assert torch.all(out[0, 4:] == eos)  # a finished row keeps emitting eos
    row1 = free[1, 4:].tolist()
    n1 = row1.index(eos) + 1 if eos in row1 else 8
    assert out[1, 4 : 4 + n1].tolist() == row1[:n1]  # the other row runs on until its own eos
    assert out.shape[1] == 4 + n1
    assert model.generate(prompt[:1], 8, temperature=0, eos_token_id=eos).shape == (1, 5)


def test_streamer_and_iterator(model):
    prompt = torch.randint(0, VOCAB, (1, 4))
    seen = []
    out = model.generate(prompt, 6, temperature=0, streamer=seen.append)
    assert torch.equal(torch.stack(seen, 1), out[:, 4:])

    class Streamer:
        def __init__(self):
            self.tokens, self.ended = [], False

        def put(self, t):
            self.tokens.append(int(t[0]))

        def end(self):
            self.ended = True

    s = Streamer()
    model.generate(prompt, 6, temperature=0, streamer=s)
    assert s.tokens == out[0, 4:].tolist() and s.ended
    it = list(model.generate_iter(prompt, 6, temperature=0))
    assert torch.equal(torch.stack(it, 1), out[:, 4:])
    assert torch.equal(model.generate(prompt, 0, temperature=0), prompt)


def test_generate_restores_training_mode(model):
    model.train()
    model.generate(torch.zeros(1, 2, dtype=torch.long), 2, temperature=0)
    assert model.training
    model.eval()


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(eos_token_id=VOCAB), "eos_token_id"),
        (dict(streamer=3), "streamer"),
    ],
)
def test_bad_generation_arguments(model, kwargs, name):
    args = dict(max_new_tokens=3)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=name):
        model.generate(torch.zeros(1, 2, dtype=torch.long), **args)


def test_bad_prompts(model):
    with pytest.raises(DTypeError, match="input_ids"):
        model.generate(torch.zeros(1, 2), 3)
    with pytest.raises(TokenIdError, match="input_ids"):
        model.generate(torch.full((1, 2), VOCAB), 3)
    with pytest.raises(ConfigError, match="input_ids.*length 0"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ConfigError, match="temperature"):  # the iterator checks before the first token
        model.generate_iter(torch.zeros(1, 2, dtype=torch.long), 3, temperature=-1)


def test_mamba2_greedy_generation_equals_repeated_full_forward():
    model = m2_model(dtype=torch.float64, mixer_cfg={"d_ssm": 24, "headdim": 6, "ngroups": 1})  # gated MLP
    prompt = ids_(2, 5, seed=3)
    out = model.generate(prompt, 12, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            nxt = model(seq)[:, -1, :VOCAB].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)


class _CountingLM:
    """Not a MambaLMHeadModel: the least a model needs for generation, whose next token is last + 1."""

    def __init__(self, vocab_size: int) -> None:
        self.config = type("Config", (), {"vocab_size": vocab_size})()
        self.training = True
        self._param = torch.nn.Parameter(torch.zeros(1))
        self.steps = 0

    def _logits(self, last: torch.Tensor) -> torch.Tensor:
        vocab = self.config.vocab_size
        return torch.nn.functional.one_hot((last + 1) % vocab, vocab).float()

    def __call__(self, input_ids, state=None, num_last_tokens=0):
        return self._logits(input_ids)[:, -num_last_tokens:] if num_last_tokens else self._logits(input_ids)

    def step(self, input_ids, state):
        self.steps += 1
        return self._logits(input_ids)

    def allocate_inference_cache(self, batch_size, device=None, dtype=None):
        return {}

    def parameters(self):
        yield self._param

    def train(self, mode=True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)


def test_generation_needs_only_forward_step_and_a_cache():
    lm = _CountingLM(vocab_size=6)
    prompt = torch.tensor([[1, 2], [4, 5]])
    out = generate(lm, prompt, 5, temperature=0)  # keyword options build the SamplingOptions
    assert out.tolist() == [[1, 2, 3, 4, 5, 0, 1], [4, 5, 0, 1, 2, 3, 4]]
    assert lm.steps == 4 and lm.training  # one prefill, then a step per further token; mode restored
    options = SamplingOptions(temperature=0, eos_token_id=4)
    tokens = list(generate_tokens(lm, prompt, 5, options=options))
    assert [t.tolist() for t in tokens] == [[3, 0], [4, 1], [4, 2], [4, 3], [4, 4]]
    with pytest.raises(ConfigError, match="options"):
        generate(lm, prompt, 2, options={"temperature": 0})
