"""`chat`: chat templates rendered as transformers renders them, end of turn, CLI.

Templates are generated here (tests/llama_layouts.py) in the formats of SmolLM2
(ChatML) and TinyLlama (Zephyr's <|user|> turns); transformers'
apply_chat_template is the reference for the rendered text and its ids. A
scripted model (its logits pick tokens from a list) checks that a reply ends at
the end-of-turn token. The CLI runs on an instruct layout served by the loopback
hub of tests/test_download.py.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
import pytest

import minigpt
from minigpt.__main__ import main
from minigpt.chat import (
    ChatMemory,
    chat_loop,
    chat_reply,
    read_chat_config,
    render_chat,
    shared_prefix,
)
from tests.llama_layouts import write_llama
from tests.reference import require
from tests.test_download import hub, layouts, tiny  # noqa: F401 (fixtures)

MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "the user says hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and then?"}]


@pytest.mark.reference
@pytest.mark.parametrize("family", ["byte-level", "sentencepiece"])
def test_rendering_equals_transformers(tmp_path, family):
    transformers = require("transformers")
    folder = write_llama(tmp_path, family, chat=True)
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    library = require("tokenizers").Tokenizer.from_file(str(folder / "tokenizer.json"))
    config = read_chat_config(folder)
    tok = minigpt.load_tokenizer(folder)
    for messages in (MESSAGES[1:2], MESSAGES, MESSAGES[1:]):
        for gen in (True, False):
            text = render_chat(config, messages, add_generation_prompt=gen)
            assert text == ref.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=gen)
            # ids as the tokenizers library reads tokenizer.json (transformers 5's
            # LlamaTokenizer swaps Llama 2's normalizer for a Metaspace "first"
            # pre-tokenizer, so it writes no ▁ after a special token)
            ids = library.encode(text, add_special_tokens=False).ids
            assert tok.encode(text, allowed_special="all",
                              add_special_tokens=False) == ids


def test_the_template_runs_in_the_sandbox(tmp_path):
    folder = write_llama(tmp_path, "byte-level", chat=True)
    config = read_chat_config(folder)
    evil = dict(config, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(Exception, match="unsafe|not safely"):
        render_chat(evil, MESSAGES)
    mutate = dict(config, chat_template="{{ messages.append(1) }}")
    with pytest.raises(Exception, match="unsafe|not safely"):
        render_chat(mutate, MESSAGES)
    raising = dict(config,
                   chat_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ValueError, match="chat template: roles must alternate"):
        render_chat(raising, MESSAGES)
    for body, match in (("{{ 1 // 0 }}", "by zero"),
                        ("{{ 'x' * 10 ** 12 }}", "MemoryError|OverflowError|repeat")):
        with pytest.raises(ValueError, match=f"chat template: .*({match})"):
            render_chat(dict(config, chat_template=body), MESSAGES)


def test_models_without_a_template_are_refused(tmp_path):
    folder = write_llama(tmp_path, "byte-level", chat=False)
    with pytest.raises(ValueError, match=r"chat_template.jinja\): this model was "
                                         "not trained to chat"):
        read_chat_config(folder)
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match="not trained to chat"):
        read_chat_config(folder)


@dataclass
class ScriptCache:
    length: int = 0

    def reset(self) -> None:
        self.length = 0


@dataclass
class Config:
    n_ctx: int
    vocab_size: int
    eos_token_ids: tuple[int, ...] = ()


@dataclass
class Scripted:
    """A stand-in model whose next token is always the next one of a script."""

    config: Config
    script: list[int]
    seen: list[int] = field(default_factory=list)

    def empty_cache(self, capacity: int | None = None) -> ScriptCache:
        return ScriptCache()

    def forward(self, ids: np.ndarray) -> np.ndarray:
        return self.forward_cached(ids, ScriptCache())

    def forward_cached(self, ids, cache, last_only: bool = False) -> np.ndarray:
        self.seen.append(len(ids))
        cache.length += len(ids)
        logits = np.zeros((1 if last_only else len(ids), self.config.vocab_size),
                          np.float32)
        logits[-1, self.script[len(self.seen) - 1]] = 10.0
        return logits


@pytest.mark.parametrize("family", ["byte-level", "sentencepiece"])
def test_a_reply_ends_at_the_end_of_turn_token(tmp_path, family):
    folder = write_llama(tmp_path, family, chat=True)
    config, tok = read_chat_config(folder), minigpt.load_tokenizer(folder)
    words = tok.encode("the user", add_special_tokens=False)
    end = tok.encode(config["eos_token"], allowed_special="all",
                     add_special_tokens=False)
    vocab = minigpt.load_model(folder).config.vocab_size
    model = Scripted(Config(64, vocab), [*words, *end, *words, *words])
    reply = "".join(chat_reply(model, tok, config, MESSAGES[1:2], temperature=0))
    assert reply.strip() == "the user"  # not one token past the end of turn
    assert len(model.seen) == len(words) + 1


def test_chat_loop_keeps_the_conversation(tmp_path):
    folder = write_llama(tmp_path, "byte-level", chat=True)
    config, tok = read_chat_config(folder), minigpt.load_tokenizer(folder)
    answer = tok.encode("the", add_special_tokens=False)
    end = tok.encode("<|im_end|>", allowed_special="all", add_special_tokens=False)
    model = Scripted(Config(64, 300), [*answer, *end] * 2)
    lines = iter(["hi", "more", ""])  # an empty line ends the chat
    out = io.StringIO()
    messages = chat_loop(model, tok, config, ask=lambda _: next(lines), out=out,
                         system="Be brief.", temperature=0)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user",
                                             "assistant"]
    assert messages[2]["content"] == "the" and out.getvalue() == "the\nthe\n"


def test_cli_chat_on_a_served_instruct_model(hub, tmp_path, capsys,  # noqa: F811
                                            monkeypatch):
    folder = tmp_path / "instruct"
    assert main(["download", "smollm2-135m-instruct", "--dir", str(folder)]) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("hi there\n\n"))
    assert main(["chat", "--model", str(folder), "--seed", "0",
                 "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("> ") and out.count("> ") == 2  # one answer, then the end
    config = read_chat_config(folder)
    model, tok = minigpt.load_model(folder), minigpt.load_tokenizer(folder)
    want = "".join(chat_reply(model, tok, config,
                              [{"role": "user", "content": "hi there"}],
                              max_new_tokens=8, temperature=0.7, top_p=0.9, seed=0))
    assert out == f"> {want}\n> "


def test_cli_chat_refuses_a_base_model_in_one_line(tmp_path, capsys):
    folder = write_llama(tmp_path, "sentencepiece", chat=False)
    assert main(["chat", "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no chat_template" in err
    json.loads((folder / "config.json").read_text())  # the folder is untouched


# Features of real templates that the two test layouts above do not use: JSON of
# tools and messages (HTML characters, accents, indent), special tokens as
# variables (set or not), tools none, today's date, loop controls, generation
# blocks, and a variable the caller passes.
FEATURES = (
    "{{ bos_token }}{% if tools is none %}[no tools]{% endif %}"
    "{% if unk_token is defined %}[unk {{ unk_token }}]{% endif %}"
    "{% if sep_token is defined %}[sep]{% endif %}"
    "[pad {{ pad_token }}][{{ strftime_now('%Y-%m-%d') }}]"
    "{{ messages[0] | tojson }}\n{{ messages | tojson(indent=2) }}\n"
    "{{ {'b': 1, 'a': '<&>'} | tojson(sort_keys=true) }}\n"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% continue %}{% endif %}"
    "{% if loop.index > 3 %}{% break %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% set inner = 'x' %}{{ message['content'] }}{% endgeneration %}"
    "{% else %}{{ message['role'] }}: {{ message['content'] }}{% endif %}\n"
    "{% endfor %}[{{ inner is defined }}]"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>"
    "{% endif %}{% if add_generation_prompt %}assistant:{% endif %}")

SPECIAL_MESSAGES = [{"role": "system", "content": "Be <brief> & 'kind' — café"},
                    {"role": "user", "content": "a \"quoted\" ü"},
                    {"role": "assistant", "content": "ok</s>"},
                    {"role": "user", "content": "more"},
                    {"role": "assistant", "content": "fine"},
                    {"role": "user", "content": "last"}]


@pytest.mark.reference
@pytest.mark.parametrize("where", ["tokenizer_config.json", "chat_template.jinja"])
def test_template_features_render_as_in_transformers(tmp_path, where):
    transformers = require("transformers")
    folder = write_llama(tmp_path, "byte-level", chat=True)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["pad_token"] = "<|im_end|>"
    if where == "chat_template.jinja":  # the file wins over the config's entry
        (folder / where).write_text(FEATURES, encoding="utf-8")
    else:
        config["chat_template"] = FEATURES
    path.write_text(json.dumps(config))
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    ours = read_chat_config(folder)
    for extra in ({}, {"enable_thinking": False}, {"enable_thinking": True}):
        for gen in (True, False):
            want = ref.apply_chat_template(SPECIAL_MESSAGES, tokenize=False,
                                           add_generation_prompt=gen, **extra)
            assert render_chat(ours, SPECIAL_MESSAGES, gen, **extra) == want
    assert "[no tools]" in want and "<think>" in render_chat(
        ours, SPECIAL_MESSAGES, enable_thinking=False)


def test_strftime_now_is_today(tmp_path):
    import datetime

    config = {"chat_template": "{{ strftime_now('%Y-%m-%d') }}"}
    assert render_chat(config, []) == datetime.date.today().isoformat()


@dataclass
class Counting:
    """A real model that counts the tokens it is asked to run."""

    model: object
    calls: list[int] = field(default_factory=list)
    fail_at: int | None = None  # raise KeyboardInterrupt at this call

    @property
    def config(self):
        return self.model.config

    def empty_cache(self, capacity=None):
        return self.model.empty_cache(capacity)

    def forward_cached(self, ids, cache, last_only=False):
        if len(self.calls) == self.fail_at:
            self.fail_at = None  # once
            raise KeyboardInterrupt
        self.calls.append(len(ids))
        return self.model.forward_cached(ids, cache, last_only)


def long_context(folder):
    """The test layout with a window long enough for a few turns (RoPE has no
    table of positions, so the weights fit any length)."""
    path = folder / "config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()),
                                    max_position_embeddings=1024)))
    return folder


def test_a_turn_runs_only_its_new_tokens(tmp_path):
    folder = long_context(write_llama(tmp_path, "byte-level", chat=True))
    config, tok = read_chat_config(folder), minigpt.load_tokenizer(folder)
    model = Counting(minigpt.load_model(folder))
    memory = ChatMemory(model)
    messages = [{"role": "user", "content": "the user says hi"}]
    knobs = dict(max_new_tokens=6, temperature=0)

    def encoded(messages):
        return tok.encode(render_chat(config, messages), allowed_special="all",
                          add_special_tokens=False)

    reply = "".join(chat_reply(memory, tok, config, messages, **knobs))
    # the prompt, then each token generated but the last: what the cache holds
    assert sum(model.calls) == len(memory.ids) > len(encoded(messages))
    for turn in ("and then?", "tell me more about the user"):
        messages += [{"role": "assistant", "content": reply.strip()},
                     {"role": "user", "content": turn}]
        ids, before = encoded(messages), list(memory.ids)
        model.calls.clear()
        reply = "".join(chat_reply(memory, tok, config, messages, **knobs))
        new = len(ids) - shared_prefix(before, ids)  # the prompt's new tokens
        assert memory.ids[:len(ids)] == ids and new < len(ids) // 2
        assert sum(model.calls) == new + len(memory.ids) - len(ids)
        # the same text as a model that runs the whole conversation again
        fresh = minigpt.load_model(folder)
        assert reply == "".join(chat_reply(fresh, tok, config, messages, **knobs))


def test_ctrl_c_stops_the_reply_and_the_chat_goes_on(tmp_path):
    folder = long_context(write_llama(tmp_path, "byte-level", chat=True))
    config, tok = read_chat_config(folder), minigpt.load_tokenizer(folder)
    model = Counting(minigpt.load_model(folder), fail_at=3)  # mid-reply
    lines = iter(["hi", "again", "/bye", "never read"])
    out = io.StringIO()
    messages = chat_loop(model, tok, config, ask=lambda _: next(lines), out=out,
                         temperature=0, max_new_tokens=5)
    assert out.getvalue().count(" [stopped]\n") == 1
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2
    # the second reply is what a fresh model says to the same conversation
    fresh = minigpt.load_model(folder)
    want = "".join(chat_reply(fresh, tok, config, messages[:3], temperature=0,
                              max_new_tokens=5))
    assert messages[3]["content"] == want.strip()


def test_clear_starts_again_and_bye_ends(tmp_path):
    folder = write_llama(tmp_path, "byte-level", chat=True)
    config, tok = read_chat_config(folder), minigpt.load_tokenizer(folder)
    answer = tok.encode("the", add_special_tokens=False)
    end = tok.encode("<|im_end|>", allowed_special="all", add_special_tokens=False)
    model = Scripted(Config(64, 300), [*answer, *end] * 3)
    lines = iter(["hi", "/clear", "more", "/bye", "unread"])
    out = io.StringIO()
    messages = chat_loop(model, tok, config, ask=lambda _: next(lines), out=out,
                         system="Be brief.", temperature=0)
    assert messages == [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "more"},
                        {"role": "assistant", "content": "the"}]
    assert next(lines) == "unread"


class TTY(io.StringIO):
    """Standard input as a terminal would be: a person typing."""

    def isatty(self) -> bool:
        return True


def test_cli_chat_options_reach_the_conversation(tmp_path, capsys, monkeypatch):
    import sys

    import minigpt.bench as bench
    import minigpt.chat
    import minigpt.threads as threads

    folder = long_context(write_llama(tmp_path, "byte-level", chat=True))
    seen, blas, kernel = [], [], []
    render = minigpt.chat.render_chat
    monkeypatch.setattr(minigpt.chat, "render_chat",
                        lambda c, m, *a, **kw: seen.append(([*m], kw)) or render(
                            c, m, *a, **kw))
    real_blas, real_kernel = bench.blas_threads, threads.set_kernel_threads
    monkeypatch.setattr(bench, "blas_threads", lambda n: blas.append(n) or real_blas(n))
    monkeypatch.setattr(threads, "set_kernel_threads",
                        lambda n: kernel.append(n) or real_kernel(n))
    monkeypatch.delitem(sys.modules, "readline", raising=False)
    monkeypatch.setattr("sys.stdin", TTY("hi there\n/bye\n"))
    assert main(["chat", "--model", str(folder), "--system", "Be brief.",
                 "--chat-template-kwargs", '{"enable_thinking": false}',
                 "--threads", "2", "--temperature", "0",
                 "--max-new-tokens", "6"]) == 0
    real_kernel(1)
    out = capsys.readouterr().out
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi there"}]
    assert seen == [(messages, {"enable_thinking": False})]
    assert "readline" in sys.modules  # line editing and history, for a person
    assert (blas[-1], kernel) == (1, [2])  # our threads take the 2; BLAS keeps one
    config, tok = read_chat_config(folder), minigpt.load_tokenizer(folder)
    want = "".join(chat_reply(minigpt.load_model(folder), tok, config, messages,
                              max_new_tokens=6, temperature=0))
    assert out == f"> {want}\n> "


@pytest.mark.parametrize("value, message", [
    ("{not json", "not JSON"), ("[1]", "must be a JSON object")])
def test_cli_chat_template_kwargs_must_be_a_json_object(tmp_path, capsys, value,
                                                        message):
    folder = write_llama(tmp_path, "byte-level", chat=True)
    with pytest.raises(SystemExit) as exc:
        main(["chat", "--model", str(folder), "--chat-template-kwargs", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err
