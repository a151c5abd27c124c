"""The request bodies of ``/v1/completions`` and ``/v1/chat/completions``, checked field by field.

Every refusal is an :class:`APIError` that names the field, what was expected and what was given, as
OpenAI's API words them (``{"error": {"message", "type", "param", "code"}}``). Fields this server has no
use for (``user``, ``stream_options`` beyond ``include_usage``) are accepted and ignored; fields that would
change the answer and are not implemented (``n > 1``, ``logprobs``, ``echo``, tools) are refused rather than
silently dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..models.sampling import SamplingOptions
from .chat import Message


class APIError(Exception):
    """An error response: HTTP ``status`` and OpenAI's error object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(param: str, expected: str, value: object) -> APIError:
    shown = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) < 80 else \
        f"{type(value).__name__} of {len(value)}"
    return APIError(400, f"{param}: expected {expected}, got {shown}", param=param, code="invalid_value")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


@dataclass(frozen=True)
class Limits:
    max_new_tokens: int  # the most a request may ask for
    max_prompt_tokens: int


@dataclass(frozen=True)
class Params:
    """What both endpoints share, checked."""

    model: str | None
    max_tokens: int
    options: SamplingOptions
    seed: int | None
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool


def _optional(body: dict, name: str, check, expected: str, default=None):
    value = body.get(name)
    if value is None:
        return default
    if not check(value):
        raise invalid(name, expected, value)
    return value


def _refuse_unless(body: dict, name: str, allowed, what: str) -> None:
    value = body.get(name)
    if value is not None and value not in allowed:
        raise APIError(400, f"{name}: {what} is not supported by this server, got {value!r}", param=name,
                       code="unsupported_value")


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not 1 <= len(stop) <= 4 or \
            not all(s and isinstance(s, str) for s in stop):
        raise invalid("stop", "a non-empty string or a list of 1 to 4 non-empty strings", stop)
    return tuple(stop)


def common(body: object, limits: Limits, default_max_tokens: int,
           max_tokens_field: str = "max_tokens") -> Params:
    """The fields both endpoints share."""
    if not isinstance(body, dict):
        raise APIError(400, f"body: expected a JSON object, got {type(body).__name__}", code="invalid_body")
    model = _optional(body, "model", lambda v: isinstance(v, str), "a string")
    max_tokens = body.get(max_tokens_field)
    if max_tokens is None and max_tokens_field != "max_tokens":
        max_tokens_field, max_tokens = "max_tokens", body.get("max_tokens")
    if max_tokens is None:
        max_tokens = min(default_max_tokens, limits.max_new_tokens)
    elif not _is_int(max_tokens) or not 1 <= max_tokens <= limits.max_new_tokens:
        raise invalid(max_tokens_field, f"an integer in [1, {limits.max_new_tokens}]", max_tokens)
    temperature = _optional(body, "temperature", lambda v: _is_number(v) and v >= 0, "a number >= 0", 1.0)
    top_p = _optional(body, "top_p", lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]")
    top_k = _optional(body, "top_k", lambda v: _is_int(v) and v >= -1,
                      "an integer >= 1 (0 or -1: no top-k)")
    penalty = _optional(body, "repetition_penalty", lambda v: _is_number(v) and v > 0, "a number > 0", 1.0)
    seed = _optional(body, "seed", _is_int, "an integer")
    stream = _optional(body, "stream", lambda v: isinstance(v, bool), "true or false", False)
    stream_options = _optional(body, "stream_options", lambda v: isinstance(v, dict), "an object", {})
    include_usage = stream_options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise invalid("stream_options.include_usage", "true or false", include_usage)
    n = _optional(body, "n", _is_int, "an integer", 1)
    if n != 1:
        raise APIError(400, f"n: only 1 choice per request is supported, got {n}", param="n",
                       code="unsupported_value")
    for name in ("frequency_penalty", "presence_penalty"):
        value = _optional(body, name, _is_number, "a number", 0)
        if value != 0:
            raise APIError(400, f"{name}: not supported (use repetition_penalty), got {value!r}", param=name,
                           code="unsupported_value")
    _refuse_unless(body, "logit_bias", [{}], "logit_bias")
    options = SamplingOptions(temperature=float(temperature), top_k=top_k if top_k and top_k > 0 else None,
                              top_p=top_p, repetition_penalty=float(penalty))
    return Params(model, max_tokens, options, seed, _stops(body), stream, include_usage)


# --------------------------------------------------------------------------------------------- completions
def completion_prompt(body: dict, tokenizer, vocab_size: int) -> list[int]:
    """``prompt``: a string, a list of token ids, or a list holding one of those."""
    for name, allowed, what in (("echo", [False], "echo"), ("logprobs", [False, 0], "logprobs"),
                                ("best_of", [1], "best_of > 1"), ("suffix", [""], "suffix")):
        _refuse_unless(body, name, allowed, what)
    prompt = body.get("prompt")
    expected = "a string, a list of token ids, or a list of one of those"
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        raise APIError(400, f"prompt: one prompt per request is supported, got a list of {len(prompt)}",
                       param="prompt", code="unsupported_value")
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, list) and all(_is_int(t) for t in prompt):
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise invalid("prompt", f"token ids in [0, {vocab_size})", bad[0])
        ids = list(prompt)
    else:
        raise invalid("prompt", expected, prompt)
    return ids


# ----------------------------------------------------------------------------------------------------- chat
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _content(i: int, content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or \
                    not isinstance(part.get("text"), str):
                raise invalid(f"messages[{i}].content[{j}]", 'a part {"type": "text", "text": ...}', part)
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(f"messages[{i}].content", "a string or a list of text parts", content)


def chat_messages(body: dict) -> list[Message]:
    for name in ("tools", "functions"):
        _refuse_unless(body, name, [[]], name)
    _refuse_unless(body, "logprobs", [False], "logprobs")
    _refuse_unless(body, "response_format", [{"type": "text"}], "a response_format other than text")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "a non-empty list of messages", messages)
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise invalid(f"messages[{i}]", 'an object {"role": ..., "content": ...}', m)
        role = m.get("role")
        if role not in _ROLES:
            raise invalid(f"messages[{i}].role", "one of 'system', 'developer', 'user', 'assistant'", role)
        out.append(Message(_ROLES[role], _content(i, m.get("content"))))
    return out
