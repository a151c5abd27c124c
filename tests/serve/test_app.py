"""The routes in-process (Starlette's test client): while the model loads, and when the engine fails."""

import pytest
from serve_helpers import tiny_model
from starlette.testclient import TestClient

from mambakit.data import ByteTokenizer
from mambakit.serve.app import ServerState, build_app
from mambakit.serve.chat import ChatTemplate
from mambakit.serve.engine import Engine
from mambakit.serve.params import Limits


def state(**kwargs) -> ServerState:
    return ServerState(model_name="tiny", limits=Limits(64, 128), **kwargs)


def test_health_is_503_while_loading_and_v1_says_so():
    client = TestClient(build_app(state()))
    response = client.get("/health")
    assert response.status_code == 503 and response.json() == {"status": "loading"}
    response = client.post("/v1/completions", json={"prompt": "x"})
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_loading"
    assert client.get("/metrics").text.count("mambakit_ready 0") == 1


def test_a_failed_load_is_reported():
    client = TestClient(build_app(state(failed="checkpoint: cannot load")))
    assert client.get("/health").json() == {"status": "failed"}
    assert "cannot load" in client.post("/v1/completions", json={"prompt": "x"}).json()["error"]["message"]


@pytest.fixture
def ready():
    s = state()
    s.tokenizer, s.template = ByteTokenizer(), ChatTemplate()
    s.engine = Engine(tiny_model(), s.tokenizer, slots=2, metrics=s.metrics).start()
    yield s
    s.engine.stop()


def test_an_engine_failure_is_a_json_500_and_the_server_goes_on(ready, monkeypatch, capsys):
    client = TestClient(build_app(ready))
    real = ready.engine._prefill_chunk
    calls = []

    def broken():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        real()

    monkeypatch.setattr(ready.engine, "_prefill_chunk", broken)
    response = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 3})
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 3}).status_code == 200
    assert "boom" in capsys.readouterr().err


def test_a_bug_in_a_route_is_a_json_500(ready, monkeypatch, capsys):
    import mambakit.serve.app as app_module

    def broken(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(app_module, "completion_prompt", broken)
    response = TestClient(build_app(ready)).post("/v1/completions", json={"prompt": "hello"})
    assert response.status_code == 500 and "Traceback" not in response.text
    assert "oops" in capsys.readouterr().err


def test_a_full_queue_is_503(ready):
    ready.engine.max_queue = 0
    response = TestClient(build_app(ready)).post("/v1/completions", json={"prompt": "hello"})
    assert response.status_code == 503 and response.json()["error"]["code"] == "server_overloaded"
