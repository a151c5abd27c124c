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
