"""Chat with an instruct model: its chat template, streamed answers, end of turn.

An instruct model was trained on conversations written in one exact format, with
control tokens around every turn (`<|im_start|>user ... <|im_end|>` for SmolLM2,
`<|user|> ... </s>` for TinyLlama). The checkpoint ships that format as a Jinja2
template, `chat_template` in `tokenizer_config.json`; transformers'
`apply_chat_template` renders it, and so do we: in Jinja2's immutable sandbox
(a template is data from the internet, and must not reach Python's internals),
with the same variables (`messages`, `add_generation_prompt`, `bos_token`,
`eos_token`). The answer streams until the model writes an end-of-turn token.

Leaves out on purpose: tools and function calling, images, editing earlier
turns, and keeping a long conversation's start when it outgrows the context
(generate() keeps its newest tokens).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from minigpt.generate import generate, stream_text

__all__ = ["chat_loop", "chat_reply", "read_chat_config", "render_chat",
           "stop_ids"]


# --8<-- [start:chat-config]
def read_chat_config(folder: str | Path) -> dict:
    """tokenizer_config.json of an instruct model; it must hold a chat_template."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        raise ValueError(f"{path.parent}: no tokenizer_config.json, so no chat "
                         f"template: is this an instruct (chat) model?")
    config = json.loads(path.read_text(encoding="utf-8"))
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: take the default
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    if not isinstance(template, str):
        raise ValueError(f"{path}: no chat_template: this model was not trained to "
                         f"chat; use `generate` instead")
    return {**config, "chat_template": template}


def token_text(config: dict, name: str) -> str:
    """bos_token / eos_token of tokenizer_config.json: a string or {"content"}."""
    token = config.get(name) or ""
    return token.get("content", "") if isinstance(token, dict) else token
# --8<-- [end:chat-config]


# --8<-- [start:render-chat]
def render_chat(config: dict, messages: list[dict[str, str]],
                add_generation_prompt: bool = True) -> str:
    """The conversation as the model was trained to read it, ready for its reply."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:  # templates call it on bad input
        raise TemplateError(message)

    # the options transformers uses: no newline after a tag, no indent before one
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(config["chat_template"]).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=token_text(config, "bos_token"),
            eos_token=token_text(config, "eos_token"))
    except TemplateError as exc:
        raise ValueError(f"chat template: {exc}") from None
# --8<-- [end:render-chat]


# --8<-- [start:chat-reply]
def stop_ids(model, tokenizer, config: dict) -> set[int]:
    """End-of-turn ids: the model's end-of-text ids and the tokenizer's eos_token."""
    stops = set(model.config.eos_token_ids)
    eos = token_text(config, "eos_token")
    if eos:
        stops.update(tokenizer.encode(eos, allowed_special="all",
                                      add_special_tokens=False)[:1])
    return stops


def chat_reply(model, tokenizer, config: dict, messages: list[dict[str, str]],
               max_new_tokens: int = 256, **knobs) -> Iterator[str]:
    """Stream the assistant's next turn, piece by piece, until end of turn."""
    prompt = render_chat(config, messages)
    # the template writes BOS and the control tokens itself: encode them as such
    ids = tokenizer.encode(prompt, allowed_special="all", add_special_tokens=False)
    stops = stop_ids(model, tokenizer, config)
    yield from stream_text(tokenizer, generate(model, ids, max_new_tokens,
                                               stop=stops, **knobs))
# --8<-- [end:chat-reply]


# --8<-- [start:chat-loop]
def chat_loop(model, tokenizer, config: dict, ask: Callable[[str], str] = input,
              out: TextIO | None = None, system: str | None = None,
              **knobs) -> list[dict[str, str]]:
    """Read a line, stream the answer, repeat until an empty line or end of input."""
    out = out or sys.stdout  # looked up now: tests and shells may replace it
    messages = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = ask("> ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        reply = ""
        for piece in chat_reply(model, tokenizer, config, messages, **knobs):
            out.write(piece)
            out.flush()  # the answer appears as it is written
            reply += piece
        out.write("\n")
        messages.append({"role": "assistant", "content": reply.strip()})
    return messages
# --8<-- [end:chat-loop]
