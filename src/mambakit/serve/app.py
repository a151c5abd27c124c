"""The HTTP side: OpenAI's routes on Starlette, every error an OpenAI-style JSON body.

Routes: ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (both with ``stream: true`` as server-sent events) and ``GET /metrics``.
Nothing here touches the model: requests are checked, tokenized and handed to the
:class:`~.engine.Engine`, whose events come back through an asyncio queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .engine import Engine, ErrorEvent, FinishEvent, GenerationRequest, QueueFull, TextEvent, Usage
from .metrics import Metrics
from .params import APIError, Limits, Params, chat_messages, common, completion_prompt


@dataclass
class ServerState:
    """What the routes share; ``engine`` stays None until the model has loaded."""

    model_name: str
    limits: Limits
    api_key: str | None = None
    max_body_bytes: int = 16 * 2**20
    metrics: Metrics = field(default_factory=Metrics)
    engine: Engine | None = None
    tokenizer: object = None
    template: object = None
    failed: str | None = None
    dispatcher: _Dispatcher | None = None
    loop: asyncio.AbstractEventLoop | None = None  # the server's event loop, once it runs
    engine_task: asyncio.Future | None = None  # Engine.run on that loop (unless the engine has a thread)
    created: int = field(default_factory=lambda: int(time.time()))


def _error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"


def _usage(usage: Usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


class _EngineStream(StreamingResponse):
    """A stream whose request is cancelled however the response ends (a client gone mid-stream too)."""

    def __init__(self, content, ticket) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.ticket = ticket

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ticket.cancel()  # a no-op once it has finished


class _Dispatcher:
    """Hands engine events to the event loop: the events of one engine iteration (a token for each of many
    streams) cross threads in one wake-up, not one each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, object]] = []

    def sink(self, queue: asyncio.Queue):
        def post(event) -> None:
            if threading.get_ident() == self._loop_thread:  # the engine runs on the loop (Engine.run)
                queue.put_nowait(event)
                return
            with self._lock:
                self._pending.append((queue, event))
                if len(self._pending) > 1:
                    return  # a delivery is already on its way
            try:
                self.loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the event loop is gone (shutting down)
                pass

        return post

    def _deliver(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
        for queue, event in items:
            queue.put_nowait(event)


def _dispatcher(state: ServerState) -> _Dispatcher:
    loop = asyncio.get_running_loop()
    if state.dispatcher is None or state.dispatcher.loop is not loop:
        state.dispatcher = _Dispatcher(loop)
    return state.dispatcher


# ------------------------------------------------------------------------------------------------ requests
def _authorize(request: Request, state: ServerState) -> None:
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), state.api_key.encode()):
        raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer KEY' with the key the "
                            "server was started with (--api-key)", code="invalid_api_key")


def _engine(state: ServerState) -> Engine:
    if state.engine is None:
        raise APIError(503, "the model is still loading; retry when GET /health answers 200"
                       if state.failed is None else f"the model failed to load: {state.failed}",
                       type="server_error", code="model_loading")
    return state.engine


async def _json_body(request: Request, state: ServerState) -> object:
    limit = state.max_body_bytes
    declared = request.headers.get("content-length")
    too_big = APIError(413, f"body: expected at most {limit} bytes, got more", code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"body: expected a JSON object, could not parse it ({exc})",
                       code="invalid_json") from None


def _check_model(params: Params, state: ServerState) -> None:
    if params.model is not None and params.model != state.model_name:
        raise APIError(404, f"model: expected {state.model_name!r} (the model this server serves), "
                            f"got {params.model!r}", param="model", code="model_not_found")


def _check_prompt(ids: list[int], state: ServerState) -> None:
    if not ids:
        raise APIError(400, "prompt: expected text that encodes to at least one token, got none",
                       param="prompt", code="invalid_value")
    if len(ids) > state.limits.max_prompt_tokens:
        raise APIError(400, f"prompt: expected at most {state.limits.max_prompt_tokens} tokens, got "
                            f"{len(ids)}", param="prompt", code="context_length_exceeded")


# ---------------------------------------------------------------------------------------------- responses
async def _run(request: Request, state: ServerState, job: GenerationRequest, params: Params,
               chat: bool) -> Response:
    """Submit ``job`` and answer with the whole completion, or stream it."""
    engine = _engine(state)
    queue: asyncio.Queue = asyncio.Queue()
    try:
        ticket = engine.submit(job, _dispatcher(state).sink(queue))
    except QueueFull as exc:
        raise APIError(503, str(exc), type="server_error", code="server_overloaded") from None
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    head = {"id": ident, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": state.model_name}
    if params.stream:
        return _EngineStream(_stream(queue, head, chat, params.include_usage), ticket)
    pieces = []
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return Response(status_code=499)
                continue
            if isinstance(event, TextEvent):
                pieces.append(event.text)
            elif isinstance(event, ErrorEvent):
                raise APIError(500, event.message, type="server_error", code="engine_error")
            else:
                pieces.append(event.text)
                break
    finally:
        ticket.cancel()
    text = "".join(pieces)
    choice = {"index": 0, "logprobs": None, "finish_reason": event.reason}
    choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
    return JSONResponse({**head, "choices": [choice], "usage": _usage(event.usage)})


async def _stream(queue: asyncio.Queue, head: dict, chat: bool, include_usage: bool):
    head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

    def chunk(text: str | None, finish: str | None = None) -> str:
        if chat:
            delta = {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        body = {**head, "choices": [choice]}
        if include_usage:
            body["usage"] = None
        return _sse(body)

    if chat:
        yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]})
    while True:
        events = [await queue.get()]
        while not queue.empty():  # a client slower than the engine gets several tokens per chunk
            events.append(queue.get_nowait())
        text = "".join(e.text for e in events if not isinstance(e, ErrorEvent))
        if text:
            yield chunk(text)
        event = events[-1]  # only the last can be an end
        if isinstance(event, ErrorEvent):
            yield _sse(APIError(500, event.message, type="server_error", code="engine_error").body())
            return
        if isinstance(event, FinishEvent):
            yield chunk(None, event.reason)
            if include_usage:
                yield _sse({**head, "choices": [], "usage": _usage(event.usage)})
            yield _sse("[DONE]")
            return


# ------------------------------------------------------------------------------------------------- routes
async def completions(request: Request) -> Response:
    state: ServerState = request.app.state.server
    engine = _engine(state)
    body = await _json_body(request, state)
    params = common(body, state.limits, default_max_tokens=16)
    _check_model(params, state)
    ids = completion_prompt(body, state.tokenizer, engine.vocab_size)
    _check_prompt(ids, state)
    job = GenerationRequest(ids, params.max_tokens, params.options, params.seed, params.stops)
    return await _run(request, state, job, params, chat=False)


async def chat_completions(request: Request) -> Response:
    state: ServerState = request.app.state.server
    _engine(state)
    body = await _json_body(request, state)
    params = common(body, state.limits, default_max_tokens=state.limits.max_new_tokens,
                    max_tokens_field="max_completion_tokens")
    _check_model(params, state)
    messages = chat_messages(body)
    ids, ends = state.template.prompt(state.tokenizer, messages)
    _check_prompt(ids, state)
    stops = tuple(dict.fromkeys(params.stops + state.template.stops))
    job = GenerationRequest(ids, params.max_tokens, params.options, params.seed, stops, ends)
    return await _run(request, state, job, params, chat=True)


async def models(request: Request) -> Response:
    state: ServerState = request.app.state.server
    card = {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "mambakit"}
    wanted = request.path_params.get("model")
    if wanted is None:
        return JSONResponse({"object": "list", "data": [card]})
    if wanted != state.model_name:
        raise APIError(404, f"model: expected {state.model_name!r} (the model this server serves), got "
                            f"{wanted!r}", param="model", code="model_not_found")
    return JSONResponse(card)


async def health(request: Request) -> Response:
    state: ServerState = request.app.state.server
    if state.engine is None:
        return JSONResponse({"status": "loading" if state.failed is None else "failed"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    state: ServerState = request.app.state.server
    engine = state.engine
    gauges = {"ready": ("1 once the model has loaded.", int(engine is not None))}
    if engine is not None:
        cache = engine.prefix_cache
        gauges.update({
            "slots": ("Slots of the state pool (concurrent generations).", engine.slots),
            "slots_busy": ("Slots running a request now.", engine.busy_slots),
            "queue_length": ("Requests waiting for a slot.", engine.queue_length),
            "decode_steps_total": ("Batched decode steps run.", engine.steps),
            "prefix_cache_hits_total": ("Requests that resumed from a kept prefix state.", cache.hits),
            "prefix_cache_misses_total": ("Requests that found no kept prefix.", cache.misses),
            "prefix_cache_entries": ("Prefix states kept.", len(cache)),
            "prefix_cache_bytes": ("Memory the kept prefix states hold.", cache.nbytes),
        })
    return PlainTextResponse(state.metrics.render(gauges), media_type="text/plain; version=0.0.4")


# -------------------------------------------------------------------------------------------- the app
def _endpoint(name: str, handler, authorized: bool = True):
    async def wrapped(request: Request) -> Response:
        state: ServerState = request.app.state.server
        try:
            if authorized:
                _authorize(request, state)
            response = await handler(request)
        except APIError as exc:
            response = _error(exc)
        except Exception:  # a bug: the client gets a JSON 500, the log the traceback, the server goes on
            traceback.print_exc()
            response = _error(APIError(500, "internal error; see the server log", type="server_error"))
        state.metrics.request(name, response.status_code)
        return response

    return wrapped


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    message = {404: f"no route {request.url.path!r}: see GET /v1/models, POST /v1/completions, "
                    f"POST /v1/chat/completions, GET /health, GET /metrics",
               405: f"method {request.method} is not allowed on {request.url.path!r}"}.get(
        status, getattr(exc, "detail", "error"))
    code = {404: "not_found", 405: "method_not_allowed"}.get(status)
    return _error(APIError(status, message, code=code))


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette):
    state: ServerState = app.state.server
    state.loop = asyncio.get_running_loop()
    yield
    if state.engine is not None:
        state.engine.stop()


def build_app(state: ServerState, lifespan=_lifespan) -> Starlette:
    """The ASGI application over ``state``."""
    routes = [
        Route("/health", _endpoint("/health", health, authorized=False), methods=["GET"]),
        Route("/metrics", _endpoint("/metrics", metrics, authorized=False), methods=["GET"]),
        Route("/v1/models", _endpoint("/v1/models", models), methods=["GET"]),
        Route("/v1/models/{model:path}", _endpoint("/v1/models", models), methods=["GET"]),
        Route("/v1/completions", _endpoint("/v1/completions", completions), methods=["POST"]),
        Route("/v1/chat/completions", _endpoint("/v1/chat/completions", chat_completions),
              methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error}, lifespan=lifespan)
    app.state.server = state
    return app
