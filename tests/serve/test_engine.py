"""The engine against the library's generate: batching, chunked prefill and the prefix cache change no
token."""

import threading
import time

import pytest
from serve_helpers import Collect, library_tokens, tiny_model

from mambakit.data import ByteTokenizer
from mambakit.errors import ConfigError
from mambakit.models import SamplingOptions
from mambakit.serve.engine import Engine, GenerationRequest, QueueFull

TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def start(model, **kwargs) -> Engine:
    return Engine(model, TOK, **kwargs).start()


def run(engine, prompt, max_new_tokens=12, **kwargs):
    sink = Collect()
    engine.submit(GenerationRequest(list(prompt), max_new_tokens, **kwargs), sink)
    return sink.wait()


def decode(ids):
    return TOK.decode(ids)


PROMPTS = [TOK.encode(t) for t in ("Hello there", "The quick brown fox jumps", "a", "0123456789" * 7,
                                   "Mamba is a selective state space model", "zz", "hello world, again")]


def test_one_request_equals_generate(model):
    engine = start(model)
    try:
        text, finish = run(engine, PROMPTS[0], 20)
        assert text == decode(library_tokens(model, PROMPTS[0], 20))
        assert finish.reason == "length"
        assert (finish.usage.prompt_tokens, finish.usage.completion_tokens) == (len(PROMPTS[0]), 20)
    finally:
        engine.stop()


@pytest.mark.parametrize("slots, chunk", [(3, 256), (8, 5), (2, 1)])
def test_concurrent_requests_equal_sequential_generate(model, slots, chunk):
    """Many requests at once, more than the slots, prompts prefilled in small chunks side by side: every
    output is the library's greedy output for that prompt alone."""
    engine = start(model, slots=slots, prefill_chunk=chunk, prefix_cache_bytes=0)
    try:
        sinks = []
        for i, prompt in enumerate(PROMPTS * 2):
            sink = Collect()
            engine.submit(GenerationRequest(prompt, 6 + i % 5), sink)
            sinks.append((prompt, 6 + i % 5, sink))
        for prompt, n, sink in sinks:
            text, finish = sink.wait()
            assert text == decode(library_tokens(model, prompt, n)), (prompt, n)
        assert engine.busy_slots == 0 and engine.queue_length == 0
    finally:
        engine.stop()


def test_seeded_sampling_equals_generate_with_that_seed(model):
    engine = start(model, slots=4)
    try:
        opts = SamplingOptions(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.2)
        sinks = []
        for seed in range(4):
            sink = Collect()
            engine.submit(GenerationRequest(PROMPTS[1], 15, options=opts, seed=seed), sink)
            sinks.append((seed, sink))
        for seed, sink in sinks:
            expected = library_tokens(model, PROMPTS[1], 15, seed=seed, temperature=0.9, top_k=40,
                                      top_p=0.95, repetition_penalty=1.2)
            assert sink.wait()[0] == decode(expected)
    finally:
        engine.stop()


def test_prefix_cache_hit_skips_prefill_and_changes_nothing(model):
    engine = start(model, prefill_chunk=7)
    system = TOK.encode("You are a helpful assistant. Answer briefly.\n")
    try:
        first = system + TOK.encode("Q: hi")
        text, finish = run(engine, first, 10, keep_prefixes=(len(system),))
        assert finish.usage.cached_tokens == 0
        assert text == decode(library_tokens(model, first, 10))
        second = system + TOK.encode("Q: what is a state?")
        text, finish = run(engine, second, 10)
        assert finish.usage.cached_tokens == len(system)
        assert text == decode(library_tokens(model, second, 10))
        # the same prompt again: nothing to prefill, the kept logits give the first token
        text, finish = run(engine, second, 10)
        assert finish.usage.cached_tokens == len(second)
        assert text == decode(library_tokens(model, second, 10))
        # a next turn that starts with the previous prompt and its answer resumes after the answer
        turn = second + library_tokens(model, second, 10) + TOK.encode(" ok?")
        text, finish = run(engine, turn, 8)
        assert finish.usage.cached_tokens == len(second) + 9
        assert text == decode(library_tokens(model, turn, 8))
    finally:
        engine.stop()


def test_prefix_cache_is_bounded_lru(model):
    one = model.allocate_inference_cache(1).nbytes + 256 * 4
    engine = start(model, prefix_cache_bytes=3 * one)
    try:
        for i in range(6):
            run(engine, TOK.encode(f"prompt number {i}"), 1)
        assert len(engine.prefix_cache) == 3 and engine.prefix_cache.nbytes <= 3 * one
        assert run(engine, TOK.encode("prompt number 5"), 1)[1].usage.cached_tokens > 0
        assert run(engine, TOK.encode("prompt number 0"), 1)[1].usage.cached_tokens == 0
    finally:
        engine.stop()


def test_stop_sequences_end_the_text_before_them(model):
    engine = start(model)
    try:
        full, _ = run(engine, PROMPTS[4], 30)
        stop = full[10:13]
        text, finish = run(engine, PROMPTS[4], 30, stops=(stop, "never-there"))
        assert finish.reason == "stop" and text == full[:full.index(stop)]
    finally:
        engine.stop()


def test_eos_ends_a_generation(model):
    first = library_tokens(model, PROMPTS[2], 5)
    tok = ByteTokenizer()
    tok.eos_token_id = first[3]
    engine = Engine(model, tok).start()
    try:
        sink = Collect()
        engine.submit(GenerationRequest(PROMPTS[2], 20), sink)
        text, finish = sink.wait()
        assert finish.reason == "stop" and finish.usage.completion_tokens == first.index(first[3]) + 1
    finally:
        engine.stop()


def test_cancel_frees_the_slot_and_the_queue_moves_on(model):
    engine = start(model, slots=1, max_queue=1)
    try:
        long = Collect()
        ticket = engine.submit(GenerationRequest(PROMPTS[0], 100000), long)
        deadline = time.monotonic() + 30
        while engine.queue_length and time.monotonic() < deadline:  # until the long one has its slot
            time.sleep(0.01)
        waiting = Collect()
        engine.submit(GenerationRequest(PROMPTS[1], 5), waiting)
        with pytest.raises(QueueFull):
            engine.submit(GenerationRequest(PROMPTS[1], 5), Collect())
        ticket.cancel()
        assert long.wait()[1].reason == "cancelled"
        assert waiting.wait()[0] == decode(library_tokens(model, PROMPTS[1], 5))
        assert engine.busy_slots == 0
    finally:
        engine.stop()


def test_an_engine_failure_fails_its_requests_and_the_engine_goes_on(model, monkeypatch, capsys):
    engine = start(model)
    try:
        real = engine._decode_step
        calls = threading.Event()

        def broken():
            if not calls.is_set():
                calls.set()
                raise RuntimeError("boom")
            real()

        monkeypatch.setattr(engine, "_decode_step", broken)
        sink = Collect()
        engine.submit(GenerationRequest(PROMPTS[0], 5), sink)
        assert sink.done.wait(30) and sink.error is not None
        assert run(engine, PROMPTS[0], 5)[0] == decode(library_tokens(model, PROMPTS[0], 5))
    finally:
        engine.stop()
    assert "boom" in capsys.readouterr().err


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="slots"):
        Engine(tiny_model(), TOK, slots=0)


def test_a_hybrid_with_attention_serves_from_per_slot_caches():
    """A KV cache has one length for all its rows: such models keep a cache per slot; concurrent requests,
    chunked prefill and prefix-cache hits still give the library's greedy tokens."""
    hybrid = tiny_model(layer_types=["mamba", "attention"], layer_cfg={"attention": {"n_heads": 2}})
    engine = start(hybrid, slots=3, prefill_chunk=4)
    assert engine.per_slot
    try:
        sinks = []
        for prompt in PROMPTS[:5] * 2:   # the second round hits the prefix cache
            sink = Collect()
            engine.submit(GenerationRequest(list(prompt), 10), sink)
            sinks.append((prompt, sink))
        for prompt, sink in sinks:
            text, _ = sink.wait()
            assert text == decode(library_tokens(hybrid, prompt, 10))
    finally:
        engine.stop()
