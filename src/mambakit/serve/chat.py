"""The chat template: messages -> prompt text, and where each message ends (worth keeping the state there).

A checkpoint whose tokenizer brings a template (``chat_template`` in ``tokenizer_config.json``, or a
``chat_template.jinja`` file) is rendered with it (needs ``jinja2``, sandboxed). Otherwise a plain
ChatML-style template serves byte and BPE models alike::

    <|im_start|>system
    You are terse.<|im_end|>
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant

and ``<|im_end|>`` becomes a stop sequence of every chat request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

END_OF_TURN = "<|im_end|>"


@dataclass(frozen=True)
class Message:
    role: str
    content: str


class ChatTemplate:
    """Renders a list of :class:`Message`; ``stops`` are the stop sequences every chat request gets."""

    def __init__(self, jinja_source: str | None = None, special: dict[str, str] | None = None) -> None:
        self.source = jinja_source
        self._template = None
        self._special = special or {}
        if jinja_source is not None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            self._template = env.from_string(jinja_source)
        self.stops: tuple[str, ...] = () if jinja_source is not None else (END_OF_TURN,)

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        if self._template is not None:
            return self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=add_generation_prompt, **self._special,
            )
        text = "".join(f"<|im_start|>{m.role}\n{m.content}{END_OF_TURN}\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def prompt(self, tokenizer, messages: list[Message]) -> tuple[list[int], tuple[int, ...]]:
        """The prompt's token ids and the lengths at which a whole message ends (the prefixes a later
        request, a next turn or another user of the same system prompt, is likely to share)."""
        ids = tokenizer.encode(self.render(messages))
        ends = []
        for k in range(1, len(messages)):
            head = tokenizer.encode(self.render(messages[:k], add_generation_prompt=False))
            if 0 < len(head) < len(ids) and ids[:len(head)] == head:  # BPE may merge across the boundary
                ends.append(len(head))
        return ids, tuple(sorted(set(ends)))


def load_chat_template(directory: Path | None) -> ChatTemplate:
    """The checkpoint's own template if it has one and jinja2 is installed, else the built-in one."""
    if directory is not None:
        source, special = None, {}
        jinja_file = directory / "chat_template.jinja"
        config_file = directory / "tokenizer_config.json"
        config: dict = {}
        if config_file.is_file():
            try:
                loaded = json.loads(config_file.read_text(encoding="utf-8"))
                config = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                config = {}
        if jinja_file.is_file():
            source = jinja_file.read_text(encoding="utf-8")
        elif isinstance(config.get("chat_template"), str):
            source = config["chat_template"]
        elif isinstance(config.get("chat_template"), list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in config["chat_template"] if isinstance(t, dict)}
            source = named.get("default")
        for name in ("bos_token", "eos_token"):
            value = config.get(name)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                special[name] = value
        if source is not None:
            try:
                return ChatTemplate(source, special)
            except ImportError:
                pass
    return ChatTemplate()
