"""Running the server: bind the socket, serve ``/health`` (503) at once, load the model in the background,
then start the engine; stop cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import MambakitError
from .app import ServerState, build_app
from .params import Limits


@dataclass(frozen=True)
class ServeConfig:
    checkpoint: str
    host: str = "127.0.0.1"
    port: int = 8000
    slots: int = 8
    api_key: str | None = None
    max_new_tokens_limit: int = 1024
    max_prompt_tokens: int = 8192
    prefill_chunk: int = 256
    prefix_cache_mb: float = 256.0
    max_queue: int = 1024
    model_name: str | None = None
    tokenizer: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    threads: int | None = None
    engine_thread: bool = False


def _log(message: str) -> None:
    print(f"mambakit serve: {message}", file=sys.stderr, flush=True)


def _load(config: ServeConfig, state: ServerState, directory) -> None:
    """Model, tokenizer, chat template and engine; then the server is ready."""
    import torch

    from ..cli.loading import load_model, load_tokenizer
    from .chat import load_chat_template
    from .engine import Engine

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    model, directory = load_model(config.checkpoint, config.device, config.dtype)
    tokenizer = load_tokenizer(directory, config.tokenizer, model.config.vocab_size)
    state.tokenizer = tokenizer
    state.template = load_chat_template(directory)
    engine = Engine(model, tokenizer, slots=config.slots, prefill_chunk=config.prefill_chunk,
                    prefix_cache_bytes=int(config.prefix_cache_mb * 2**20), max_queue=config.max_queue,
                    metrics=state.metrics)
    if config.engine_thread:
        state.engine = engine.start()
        return
    while state.loop is None:  # the event loop starts beside this thread
        time.sleep(0.01)

    async def start() -> None:  # on the loop: the engine's task, and from now on the routes see it
        state.engine_task = asyncio.ensure_future(engine.run())
        state.engine = engine

    asyncio.run_coroutine_threadsafe(start(), state.loop).result()


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that Ctrl-C or SIGTERM ends in a return, not the signal re-raised after
        the graceful shutdown, so the engine is stopped and the command exits 0."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            getattr(self, "_captured_signals", []).clear()

    return Server


def serve(config: ServeConfig) -> int:
    """Serve until interrupted; returns the exit code (a checkpoint that fails to load raises its error)."""
    import uvicorn

    from ..cli.loading import checkpoint_directory

    directory = checkpoint_directory(config.checkpoint)  # a missing path fails now, before binding
    name = config.model_name or Path(config.checkpoint).resolve().name  # the folder the user named
    state = ServerState(model_name=name, api_key=config.api_key,
                        limits=Limits(config.max_new_tokens_limit, config.max_prompt_tokens))
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise MambakitError(f"--port: cannot listen on {config.host}:{config.port} "
                            f"({exc.strerror})") from None
    host, port = sock.getsockname()[:2]
    settings = uvicorn.Config(build_app(state), log_level="warning", access_log=False,
                              timeout_graceful_shutdown=3, lifespan="on")
    server = _server_class()(settings)
    failure: list[BaseException] = []

    def load() -> None:
        try:
            _load(config, state, directory)
            _log(f"ready: {name!r}, {config.slots} slots, at http://{host}:{port}/v1")
        except BaseException as exc:  # reported by the main thread once the server has stopped
            failure.append(exc)
            state.failed = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            server.should_exit = True

    _log(f"listening on http://{host}:{port} (loading {str(directory)!r})")
    loader = threading.Thread(target=load, name="mambakit-load", daemon=True)
    loader.start()
    try:
        server.run(sockets=[sock])
    finally:
        loader.join()
        if state.engine is not None and config.engine_thread:  # a task on the loop stopped with it
            state.engine.stop()
        with contextlib.suppress(OSError):
            sock.close()
    if failure:
        raise failure[0]
    _log("stopped")
    return 0
