"""The bundled demo model: it loads through the public API, and its output is pinned.

The golden test guards every layer at once: greedy decoding is deterministic, so
any change in the forward pass, the tokenizer, the weight reader or the
generation loop that moves a logit enough to change an argmax changes the tokens.
The reference test checks the shipped files are ordinary GPT-2 files, by loading
them with Hugging Face transformers and comparing logits and tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import minigpt
from minigpt.__main__ import DEFAULT_MODEL, main
from minigpt.weights import read_header
from tests.reference import require

DEMO = Path(minigpt.__file__).parent / "demo"
CORPUS = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt"

# Written once from the shipped weights (tools/train_demo.py, seed 1337) by running
# greedy decoding (argmax at every step, no cache) for 40 tokens from "ROMEO:" and
# pasting the ids. Regenerate only when the demo model itself is retrained.
PROMPT = "ROMEO:"
GOLDEN = [10, 73, 457, 321, 365, 44, 307, 436, 44, 10, 327, 291, 457, 321, 365, 44,
          291, 457, 304, 108, 480, 294, 320, 44, 10, 327, 291, 457, 304, 365, 44,
          298, 291, 457, 304, 108, 480, 294, 320, 46]


def greedy_ids(model, ids: list[int], n: int) -> list[int]:
    """The plainest greedy loop: the whole forward pass, argmax, append."""
    ids = list(ids)
    for _ in range(n):
        ids.append(int(np.argmax(model.forward(np.array(ids))[-1])))
    return ids


def test_demo_files_are_a_small_fp16_gpt2_checkpoint():
    names = {p.name for p in DEMO.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt",
            "MODEL_CARD.md"} <= names
    assert sum(p.stat().st_size for p in DEMO.iterdir()) <= 5_000_000
    header, _ = read_header(DEMO / "model.safetensors")
    header.pop("__metadata__", None)
    assert {entry["dtype"] for entry in header.values()} == {"F16"}
    assert DEFAULT_MODEL == DEMO  # what `python -m minigpt generate` loads


def test_demo_loads_through_the_public_api():
    model, tok = minigpt.load_model(DEMO), minigpt.load_tokenizer(DEMO)
    config = json.loads((DEMO / "config.json").read_text())
    assert model.config.vocab_size == len(tok.vocab) == config["vocab_size"]
    assert model.config.n_ctx == config["n_positions"]
    text = CORPUS.read_text(encoding="utf-8")[:2000]
    assert tok.decode(tok.encode(text)) == text
    logits = model.forward(np.array(tok.encode(PROMPT)))
    assert logits.shape == (len(tok.encode(PROMPT)), model.config.vocab_size)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()


def test_greedy_output_is_golden():
    model, tok = minigpt.load_model(DEMO), minigpt.load_tokenizer(DEMO)
    prompt = tok.encode(PROMPT)
    assert greedy_ids(model, prompt, len(GOLDEN))[len(prompt):] == GOLDEN
    for use_cache in (True, False):  # generate() must agree with the plain loop
        got = list(minigpt.generate(model, prompt, len(GOLDEN), use_cache=use_cache))
        assert got == GOLDEN


def test_cli_uses_the_demo_model_by_default(capsys):
    tok = minigpt.load_tokenizer(DEMO)
    assert main(["generate", PROMPT, "--temperature", "0",
                 "--max-new-tokens", str(len(GOLDEN))]) == 0
    assert capsys.readouterr().out == PROMPT + tok.decode(GOLDEN) + "\n"


def test_model_card_states_the_measured_figures():
    card = (DEMO / "MODEL_CARD.md").read_text(encoding="utf-8")
    log = json.loads((DEMO / "training_log.json").read_text())
    evaluation = json.loads((DEMO / "evaluation.json").read_text())
    assert f"{log['final_val_loss']:.3f}" in card
    assert f"{log['final_train_loss']:.3f}" in card
    assert f"{evaluation['real_word_rate']:.1%}" in card
    assert f"{log['n_params']:,}" in card
    assert evaluation["real_word_rate"] >= 0.85  # the target of the demo model


def test_real_word_figure_reproduces():
    from tools.real_words import measure

    evaluation = json.loads((DEMO / "evaluation.json").read_text())
    again = measure(evaluation["prompt"], evaluation["max_new_tokens"],
                    evaluation["seed"])
    assert again["settings"] == evaluation["settings"]  # still the CLI's defaults
    assert again["real_word_rate"] == evaluation["real_word_rate"]
    assert again["text"] == evaluation["text"]


def test_real_word_splitting():
    from tools.real_words import words

    assert words("O Romeo, Romeo! wherefore art thou 'tis o'er--") == [
        "o", "romeo", "romeo", "wherefore", "art", "thou", "tis", "o'er"]
    assert re.fullmatch(r"[a-z']+", "".join(words(CORPUS.read_text()[:5000])))


@pytest.mark.reference
def test_demo_matches_transformers():
    """Tokens and logits equal to Hugging Face's own GPT-2 classes on the same files.

    Tolerance 1e-4 on logits of size ~10: both sides compute in float32 from the
    same float16 weights and differ only in summation order.
    """
    torch = require("torch")
    transformers = require("transformers")
    tok = minigpt.load_tokenizer(DEMO)
    ref_tok = transformers.GPT2Tokenizer(str(DEMO / "vocab.json"),
                                         str(DEMO / "merges.txt"))
    text = CORPUS.read_text(encoding="utf-8")[-3000:]  # from the held-out split
    ids = tok.encode(text)
    assert ids == ref_tok.encode(text)
    ref = transformers.GPT2LMHeadModel.from_pretrained(DEMO, dtype=torch.float32)
    window = np.array(ids[: ref.config.n_positions])
    with torch.no_grad():
        want = ref.eval()(torch.from_numpy(window)[None]).logits[0].numpy()
    got = minigpt.load_model(DEMO).forward(window)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
