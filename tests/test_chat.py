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
from minigpt.chat import chat_loop, chat_reply, read_chat_config, render_chat
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


def test_models_without_a_template_are_refused(tmp_path):
    folder = write_llama(tmp_path, "byte-level", chat=False)
    with pytest.raises(ValueError, match="no chat_template: this model was not "
                                         "trained to chat"):
        read_chat_config(folder)
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match="no tokenizer_config.json"):
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
