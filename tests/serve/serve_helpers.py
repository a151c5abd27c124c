"""Helpers for the server tests: a tiny random model and a way to run engine requests to the end."""

import threading

import torch

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.models import generate
from mambakit.serve.engine import ErrorEvent, FinishEvent, TextEvent


def tiny_model(seed: int = 0, **config) -> MambaLMHeadModel:
    settings = {"d_model": 32, "n_layer": 2, "vocab_size": 256, **config}
    model = MambaLMHeadModel(MambaConfig(**settings), generator=torch.Generator().manual_seed(seed))
    return model.eval()


def library_tokens(model, prompt_ids, max_new_tokens, seed=None, **sampling) -> list[int]:
    """The library's ``generate`` on one prompt: the new token ids."""
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    sampling.setdefault("temperature", 0.0)
    out = generate(model, torch.tensor([prompt_ids]), max_new_tokens, generator=generator, **sampling)
    return out[0, len(prompt_ids):].tolist()


class Collect:
    """A sink: gathers one request's events; :meth:`wait` returns (text, finish event)."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.finish: FinishEvent | None = None
        self.error: str | None = None
        self.done = threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, TextEvent):
            self.pieces.append(event.text)
        elif isinstance(event, FinishEvent):
            self.pieces.append(event.text)
            self.finish = event
            self.done.set()
        elif isinstance(event, ErrorEvent):
            self.error = event.message
            self.done.set()

    def wait(self, timeout: float = 60.0):
        assert self.done.wait(timeout), "the request did not finish"
        assert self.error is None, self.error
        return "".join(self.pieces), self.finish


class ServerProcess:
    """``mambakit serve`` in a subprocess on a free localhost port; ``url`` once it is ready."""

    def __init__(self, checkpoint, *flags: str, timeout: float = 120.0) -> None:
        import os
        import queue
        import subprocess
        import sys
        import time

        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(src), env.get("PYTHONPATH", "")])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mambakit", "serve", "--checkpoint", str(checkpoint), "--port", "0",
             *flags], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.log: list[str] = []
        lines: queue.Queue = queue.Queue()

        def drain() -> None:  # keep reading, so the pipe never fills
            for line in self.process.stderr:
                self.log.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        self.url = None
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if "listening on http://" in line:
                self.url = line.split("listening on ", 1)[1].split()[0]
            if " ready: " in line:
                return
        self.stop()
        raise AssertionError("the server did not start:\n" + "".join(self.log))

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
