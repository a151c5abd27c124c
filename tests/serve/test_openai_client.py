"""``mambakit serve`` as users use it: a subprocess on a free localhost port, talked to with the official
``openai`` client (and raw HTTP for what a client never sends)."""

import json
import time

import httpx
import openai
import pytest
from serve_helpers import ServerProcess, library_tokens

from mambakit import MambaLMHeadModel
from mambakit.cli import main
from mambakit.data import ByteTokenizer
from mambakit.serve.chat import ChatTemplate, Message

KEY = "test-key"
TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def server(checkpoint):
    process = ServerProcess(checkpoint, "--api-key", KEY, "--slots", "4", "--max-new-tokens-limit", "256",
                            "--max-prompt-tokens", "600", "--prefill-chunk", "64")
    yield process
    assert process.stop() == 0, "".join(process.log)
    assert "Traceback" not in "".join(process.log), "".join(process.log)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(checkpoint):
    return MambaLMHeadModel.from_pretrained(checkpoint).eval()


@pytest.fixture(scope="module")
def model_id(checkpoint):
    return checkpoint.name


def greedy_text(model, ids, n, stops=()):
    text = TOK.decode(library_tokens(model, ids, n))
    cut = [text.find(s) for s in stops if s in text]
    return text[:min(cut)] if cut else text


def chat_ids(messages):
    return ChatTemplate().prompt(TOK, [Message(m["role"], m["content"]) for m in messages])[0]


def raw(server, method, path, key=KEY, **kwargs):
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kwargs)


# --------------------------------------------------------------------------------------------- answers
def test_health_and_models(server, client, model_id):
    assert raw(server, "GET", "/health", key=None).json() == {"status": "ok"}
    assert [m.id for m in client.models.list().data] == [model_id]
    assert client.models.retrieve(model_id).id == model_id


def test_completion_equals_the_librarys_greedy_generate(client, model, model_id):
    prompt = "The state space model"
    out = client.completions.create(model=model_id, prompt=prompt, max_tokens=24, temperature=0)
    assert out.choices[0].text == greedy_text(model, TOK.encode(prompt), 24)
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (21, 24, 45)


def test_completion_equals_mambakit_generate(client, checkpoint, model_id, capsys):
    prompt = "ROMEO:"
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", prompt, "--max-new-tokens", "30",
                 "--temperature", "0", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    out = client.completions.create(model=model_id, prompt=prompt, max_tokens=30, temperature=0)
    assert prompt + out.choices[0].text + "\n" == printed


def test_token_id_prompts(client, model, model_id):
    ids = TOK.encode("token ids")
    out = client.completions.create(model=model_id, prompt=ids, max_tokens=10, temperature=0)
    assert out.choices[0].text == greedy_text(model, ids, 10)


def test_chat_completion_uses_the_template(client, model, model_id):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}]
    out = client.chat.completions.create(model=model_id, messages=messages, max_tokens=20, temperature=0)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == greedy_text(model, chat_ids(messages), 20, ["<|im_end|>"])
    assert out.usage.prompt_tokens == len(chat_ids(messages))


def test_streamed_chunks_arrive_before_the_end(client, model, model_id):
    prompt = "Streaming, one token at a time"
    arrivals, pieces, finish = [], [], None
    stream = client.completions.create(model=model_id, prompt=prompt, max_tokens=200, temperature=0,
                                       stream=True)
    for chunk in stream:
        arrivals.append(time.perf_counter())
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "length" and "".join(pieces) == greedy_text(model, TOK.encode(prompt), 200)
    assert len([p for p in pieces if p]) > 20
    assert arrivals[-1] - arrivals[0] > 0  # several chunks, not one body at the end


def test_streamed_chat_with_usage(client, model, model_id):
    messages = [{"role": "user", "content": "Tell me a story"}]
    stream = client.chat.completions.create(model=model_id, messages=messages, max_tokens=40, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy_text(model, chat_ids(messages), 40, ["<|im_end|>"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 40
    assert len({c.id for c in chunks}) == 1


def test_stop_sequences(client, model, model_id):
    prompt = "Where does it stop?"
    full = greedy_text(model, TOK.encode(prompt), 60)
    stop = full[20:23]
    out = client.completions.create(model=model_id, prompt=prompt, max_tokens=60, temperature=0,
                                    stop=[stop, "not-in-there"])
    assert out.choices[0].finish_reason == "stop" and out.choices[0].text == full[:full.index(stop)]
    pieces = [c.choices[0].text for c in client.completions.create(
        model=model_id, prompt=prompt, max_tokens=60, temperature=0, stop=stop, stream=True)]
    assert "".join(pieces) == full[:full.index(stop)]


def test_seed_makes_sampling_repeatable(client, model, model_id):
    prompt = "Sampled"
    kwargs = dict(model=model_id, prompt=prompt, max_tokens=20, temperature=1.0, top_p=0.9)
    a = client.completions.create(seed=7, extra_body={"top_k": 50}, **kwargs).choices[0].text
    b = client.completions.create(seed=7, extra_body={"top_k": 50}, **kwargs).choices[0].text
    expected = TOK.decode(library_tokens(model, TOK.encode(prompt), 20, seed=7, temperature=1.0, top_p=0.9,
                                         top_k=50))
    assert a == b == expected


def test_prefix_cache_skips_a_shared_system_prompt_and_changes_nothing(server, client, model, model_id):
    system = {"role": "system", "content": "You answer questions about state space models. " * 4}
    first = [system, {"role": "user", "content": "What is a selective scan?"}]
    second = [system, {"role": "user", "content": "And Mamba-2?"}]
    a = client.chat.completions.create(model=model_id, messages=first, max_tokens=12, temperature=0)
    b = client.chat.completions.create(model=model_id, messages=second, max_tokens=12, temperature=0)
    system_tokens = len(TOK.encode(ChatTemplate().render([Message("system", system["content"])], False)))
    assert a.usage.prompt_tokens_details.cached_tokens == 0
    assert b.usage.prompt_tokens_details.cached_tokens == system_tokens
    assert b.choices[0].message.content == greedy_text(model, chat_ids(second), 12, ["<|im_end|>"])
    # the next turn of the first chat resumes after at least its prompt (after its answer too where the
    # answer's text re-encodes to the tokens generated: not so for a random model's invalid UTF-8)
    turn = first + [{"role": "assistant", "content": a.choices[0].message.content},
                    {"role": "user", "content": "Thanks."}]
    c = client.chat.completions.create(model=model_id, messages=turn, max_tokens=12, temperature=0)
    assert c.usage.prompt_tokens_details.cached_tokens >= a.usage.prompt_tokens
    assert c.choices[0].message.content == greedy_text(model, chat_ids(turn), 12, ["<|im_end|>"])
    metrics = raw(server, "GET", "/metrics", key=None).text
    hits = float(next(line.split()[1] for line in metrics.splitlines()
                      if line.startswith("mambakit_prefix_cache_hits_total")))
    assert hits >= 2


# ---------------------------------------------------------------------------------------------- errors
def error_of(response, status):
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": "10"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 257}, "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"prompt": "x", "temperature": -0.5}, "temperature"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "stop": 3}, "stop"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": 12}, "prompt"),
    ({"prompt": [1, 999]}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": "x" * 601}, "prompt"),
])
def test_bad_completion_fields_are_400_naming_the_field(server, body, param):
    error = error_of(raw(server, "POST", "/v1/completions", json=body), 400)
    assert error["param"] == param and param in error["message"]


def test_a_prompt_over_the_limit_says_so(server):
    error = error_of(raw(server, "POST", "/v1/completions", json={"prompt": "x" * 601}), 400)
    assert error["code"] == "context_length_exceeded" and "600" in error["message"]


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1}, "max_completion_tokens"),
])
def test_bad_chat_fields_are_400(server, body, param):
    assert error_of(raw(server, "POST", "/v1/chat/completions", json=body), 400)["param"] == param


def test_malformed_json_and_non_objects_are_400(server):
    assert error_of(raw(server, "POST", "/v1/completions", content=b'{"prompt": "x",'), 400)["code"] == \
        "invalid_json"
    error_of(raw(server, "POST", "/v1/completions", content=b"\xff\xfe"), 400)
    error_of(raw(server, "POST", "/v1/completions", json=[1, 2]), 400)


def test_a_huge_body_is_413(server):
    error_of(raw(server, "POST", "/v1/completions", content=b"x" * (17 * 2**20)), 413)


def test_the_key_is_required(server, client, model_id):
    error_of(raw(server, "POST", "/v1/completions", key=None, json={"prompt": "x"}), 401)
    error_of(raw(server, "GET", "/v1/models", key="wrong"), 401)
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=model_id, prompt="x", max_tokens=2)


def test_unknown_models_and_routes_are_404(server, client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="x", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")
    assert error_of(raw(server, "GET", "/v1/nothing"), 404)["code"] == "not_found"
    error_of(raw(server, "GET", "/v1/completions"), 405)


def test_client_errors_map_to_openai_exceptions(client, model_id):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=model_id, prompt="x", temperature=-1)


def test_a_client_gone_mid_stream_frees_its_slot(server, client, model_id):
    body = {"prompt": "a long one", "max_tokens": 256, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["object"] == "text_completion"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metrics = raw(server, "GET", "/metrics", key=None).text
        if "mambakit_slots_busy 0" in metrics and 'reason="cancelled"' in metrics:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(metrics)
    # and the server goes on
    assert client.completions.create(model=model_id, prompt="still there?", max_tokens=3).usage


def test_metrics_are_prometheus_text(server):
    response = raw(server, "GET", "/metrics", key=None)
    assert response.headers["content-type"].startswith("text/plain")
    names = {line.split()[2] for line in response.text.splitlines() if line.startswith("# TYPE")}
    for name in ("requests_total", "prompt_tokens_total", "generation_tokens_total",
                 "generation_tokens_per_second", "slots_busy", "queue_length", "prefix_cache_hits_total"):
        assert f"mambakit_{name}" in names
    assert 'mambakit_requests_total{endpoint="/v1/completions",status="400"}' in response.text
