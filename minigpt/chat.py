"""Chat with an instruct model: its chat template, streamed answers, end of turn.

An instruct model was trained on conversations written in one exact format, with
control tokens around every turn (`<|im_start|>user ... <|im_end|>` for SmolLM2,
`<|user|> ... </s>` for TinyLlama). The checkpoint ships that format as a Jinja2
template, in `chat_template.jinja` or as `chat_template` in
`tokenizer_config.json`; transformers' `apply_chat_template` renders it, and so
do we: in Jinja2's immutable sandbox (a template is data from the internet, and
must not reach Python's internals), with the same variables (`messages`,
`add_generation_prompt`, `tools` and `documents` set to none, the special tokens
`bos_token`, `eos_token`, `pad_token`... that the tokenizer config sets, and any
extra ones the caller passes, such as `enable_thinking`), the same helpers
(`raise_exception`, a `tojson` that does not escape HTML, `strftime_now`), loop
controls (`{% break %}`) and `{% generation %}` blocks. The answer streams until
the model writes an end-of-turn token.

Each turn re-renders the whole conversation, but `ChatMemory` keeps the KV cache
of the tokens seen so far: only the tokens after the longest prefix the new
rendering shares with the cached one are run, so a turn costs what its new
tokens cost.

Leaves out on purpose: tools and function calling, images, editing earlier
turns, and keeping a long conversation's start when it outgrows the context
(generate() keeps its newest tokens).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

import numpy as np
from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from minigpt.generation import LanguageModel, generate, stream_text
from minigpt.weights import read_json

__all__ = ["ChatMemory", "chat_loop", "chat_reply", "end_of_turn_ids",
           "read_chat_config", "render_chat", "shared_prefix"]

# the special tokens transformers hands a template, when the tokenizer sets them
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                  "cls_token", "mask_token")


# --8<-- [start:chat-config]
def read_chat_config(folder: str | Path) -> dict:
    """tokenizer_config.json of an instruct model, with its chat template: from
    chat_template.jinja if there is one (it wins, as in transformers)."""
    folder = Path(folder)
    path, jinja = folder / "tokenizer_config.json", folder / "chat_template.jinja"
    config = read_json(path) if path.is_file() else {}
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: take the default
        named = {t.get("name"): t.get("template") for t in template
                 if isinstance(t, dict) and isinstance(t.get("name"), str)}
        template = named.get("default")
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    if not isinstance(template, str):
        raise ValueError(f"{folder}: no chat_template (in tokenizer_config.json or "
                         f"chat_template.jinja): this model was not trained to "
                         f"chat; use `generate` instead")
    return {**config, "chat_template": template}


def token_text(config: dict, name: str) -> str | None:
    """bos_token / eos_token of tokenizer_config.json: a string or {"content"}."""
    token = config.get(name)
    return token.get("content") if isinstance(token, dict) else token
# --8<-- [end:chat-config]


# --8<-- [start:render-chat]
def render_chat(config: dict, messages: list[dict[str, str]],
                add_generation_prompt: bool = True, **variables: object) -> str:
    """The conversation as the model was trained to read it, ready for its reply.

    variables: more names for the template, e.g. enable_thinking=False."""
    special = {name: token_text(config, name) for name in SPECIAL_TOKENS}
    try:
        return chat_environment().from_string(config["chat_template"]).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            tools=None, documents=None,
            **{k: v for k, v in special.items() if isinstance(v, str)},
            **variables)  # the caller's names win over the special tokens
    except Exception as exc:  # the template is data: what it raises is its fault
        raise ValueError(f"chat template: {str(exc) or type(exc).__name__}") from None


def chat_environment() -> ImmutableSandboxedEnvironment:
    """Jinja2's immutable sandbox, set up as transformers sets it up."""
    # no newline after a tag, no indent before one: the options transformers uses
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols, GenerationBlock])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env
# --8<-- [end:render-chat]


# --8<-- [start:template-helpers]
def raise_exception(message: str) -> None:
    """What a template calls on a conversation it cannot render."""
    raise TemplateError(message)


def tojson(x: object, ensure_ascii: bool = False, indent: int | None = None,
           separators: tuple | None = None, sort_keys: bool = False) -> str:
    """JSON as transformers' templates get it: Jinja2's own tojson escapes <, >,
    & and ' for HTML, and a prompt is no HTML."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


def strftime_now(format: str) -> str:
    """Today's date and time, for templates that write it into the prompt."""
    return datetime.now().strftime(format)


class GenerationBlock(Extension):
    """{% generation %}...{% endgeneration %}: transformers marks the assistant's
    text with it for training; rendering shows the inside, in a scope of its own."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        line = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=line)
# --8<-- [end:template-helpers]


# --8<-- [start:chat-memory]
def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many ids a and b share at their start."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n  # the usual case, compared at C speed
    return next(i for i in range(n) if a[i] != b[i])


@dataclass
class ChatMemory:
    """A model that keeps its KV cache from one turn to the next: a turn runs
    only the tokens after the longest prefix they share with the cached ones."""

    model: LanguageModel
    cache: object = None  # the model's own cache, made on first use
    ids: list[int] = field(default_factory=list)  # the tokens the cache holds

    @property
    def config(self) -> object:
        return self.model.config

    def forward(self, ids: np.ndarray) -> np.ndarray:
        """The model's own forward pass. ids: (T,) -> (T, V)"""
        return self.model.forward(ids)

    def empty_cache(self, capacity: int | None = None) -> list[int]:
        """What generate() takes for a new cache: the list of its window's tokens
        (the model's cache itself is kept)."""
        return []

    def forward_cached(self, ids: np.ndarray, window: list[int],
                       last_only: bool = False) -> np.ndarray:
        """Logits of ids, which follow window's tokens. (T,) -> (T, V), or (1, V)"""
        window += [int(i) for i in ids]
        if self.cache is None:  # the first turn: one cache for the whole window
            self.cache = self.model.empty_cache()
        # keep the shared prefix, and at least one token to run; rows beyond
        # cache.length were never finished (Ctrl-C): they are not kept
        keep = min(shared_prefix(self.ids, window), self.cache.length,
                   len(window) - 1)
        self.cache.length, self.ids = keep, window[:keep]  # forget the rest
        logits = self.model.forward_cached(np.array(window[keep:], dtype=np.int64),
                                           self.cache, last_only)
        self.ids = list(window)
        return logits
# --8<-- [end:chat-memory]


# --8<-- [start:chat-reply]
def end_of_turn_ids(model, tokenizer, config: dict) -> set[int]:
    """The model's end-of-text ids and the tokenizer's eos_token: either ends
    the assistant's turn."""
    stops = set(model.config.eos_token_ids)
    eos = token_text(config, "eos_token")
    if isinstance(eos, str) and eos:
        stops.update(tokenizer.encode(eos, allowed_special="all",
                                      add_special_tokens=False)[:1])
    return stops


def chat_reply(model, tokenizer, config: dict, messages: list[dict[str, str]],
               max_new_tokens: int = 256, template_kwargs: dict | None = None,
               **knobs) -> Iterator[str]:
    """Stream the assistant's next turn, piece by piece, until end of turn.

    A ChatMemory as the model reuses the KV cache of the conversation so far."""
    prompt = render_chat(config, messages, **(template_kwargs or {}))
    # the template writes BOS and the control tokens itself: encode them as such
    ids = tokenizer.encode(prompt, allowed_special="all", add_special_tokens=False)
    stops = end_of_turn_ids(model, tokenizer, config)
    yield from stream_text(tokenizer, generate(model, ids, max_new_tokens,
                                               stop=stops, **knobs))
# --8<-- [end:chat-reply]


# --8<-- [start:chat-loop]
def chat_loop(model, tokenizer, config: dict, ask: Callable[[str], str] = input,
              out: TextIO | None = None, system: str | None = None,
              **knobs) -> list[dict[str, str]]:
    """Read a line, stream the answer, repeat until /bye, an empty line or the
    end of input; /clear starts the conversation again."""
    out = out or sys.stdout  # looked up now: tests and shells may replace it
    memory = ChatMemory(model)  # one cache for the whole conversation
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    while True:
        try:
            line = ask("> ").strip()
        except EOFError:
            break
        if line in ("", "/bye"):
            break
        if line == "/clear":
            messages = list(start)
            out.write("(a new conversation)\n")
            continue
        messages.append({"role": "user", "content": line})
        reply = answer(memory, tokenizer, config, messages, out, **knobs)
        messages.append({"role": "assistant", "content": reply.strip()})
    return messages


def answer(model, tokenizer, config: dict, messages: list[dict[str, str]],
           out: TextIO, **knobs) -> str:
    """Write the reply to out as it comes; Ctrl-C ends the reply, not the chat."""
    reply = ""
    try:
        for piece in chat_reply(model, tokenizer, config, messages, **knobs):
            out.write(piece)
            out.flush()  # the answer appears as it is written
            reply += piece
    except KeyboardInterrupt:  # what was written so far stays in the chat
        out.write(" [stopped]")
    out.write("\n")
    return reply
# --8<-- [end:chat-loop]
