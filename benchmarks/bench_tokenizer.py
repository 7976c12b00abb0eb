"""Tokenizer speed: all of Tiny Shakespeare through GPT-2's BPE, ours vs tiktoken.

Also times training our byte-level BPE to 512 tokens on the same text, and the
worst case of our simple merge loop: one 10,000-letter chunk of random letters.
Each call of our encoder starts with an empty chunk cache, so every call does the
full work; the variants take turns (time_alternating) on this shared machine.
Writes benchmarks/results/tokenizer.json and docs/assets/charts/tokenizer-speed.svg.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

from benchmarks.common import (
    ROOT,
    chart_path,
    machine_caption,
    pyplot,
    save_results,
    time_alternating,
)
from minigpt.info import machine_info
from minigpt.tokenizer import ByteBPE, load_tokenizer, train_bpe

CORPUS = ROOT / "data" / "tinyshakespeare.txt"
GPT2_DIR = ROOT / "data" / "gpt2"  # fetched by tools/fetch_assets.py
GPT2_PAT = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
            r"""|\s+(?!\S)|\s+""")


def tiktoken_gpt2(folder: Path):
    """tiktoken's gpt2 encoding built from the local files (no download)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"),
                                            str(folder / "encoder.json"))
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def run(quick: bool = False) -> dict:
    text = CORPUS.read_text(encoding="utf-8")
    if quick:
        text = text[:100_000]
    rounds = 3 if quick else 7
    results: dict = {"corpus_chars": len(text), "corpus_bytes": len(text.encode()),
                     "rounds": rounds}
    train = time_alternating({"train_bpe_512": lambda: train_bpe(text, 512)},
                             rounds=rounds)
    results["train_bpe_512_s"] = train["train_bpe_512"]
    if (GPT2_DIR / "vocab.bpe").exists():
        gpt2 = load_tokenizer(GPT2_DIR)
        ref = tiktoken_gpt2(GPT2_DIR)

        def ours_cold() -> list[int]:
            fresh = ByteBPE(gpt2.vocab, gpt2.merges)  # empty cache: the full work
            return fresh.encode(text)

        ids = ours_cold()
        assert ids == ref.encode_ordinary(text), "minigpt and tiktoken disagree"
        times = time_alternating({"minigpt": ours_cold,
                                  "tiktoken": lambda: ref.encode_ordinary(text)},
                                 rounds=rounds)
        results.update(gpt2_tokens=len(ids), minigpt_s=times["minigpt"],
                       tiktoken_s=times["tiktoken"],
                       ratio=times["minigpt"] / times["tiktoken"])
        # the worst case for the simple merge loop: one long chunk, no spaces
        rng = random.Random(0)
        n = 2_000 if quick else 10_000
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(n))
        worst = time_alternating(
            {"minigpt": lambda: ByteBPE(gpt2.vocab, gpt2.merges).encode(word),
             "tiktoken": lambda: ref.encode_ordinary(word)}, rounds=3)
        results.update(long_word_chars=n, long_word_minigpt_s=worst["minigpt"],
                       long_word_tiktoken_s=worst["tiktoken"])
        draw(results, machine_info())  # a temporary folder in a quick run
    for key, value in results.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    save_results("tokenizer", results, command="python -m benchmarks tokenizer")
    return results


def draw(results: dict, machine: dict) -> None:
    """A bar per tokenizer: seconds to encode the corpus."""
    plt = pyplot()
    names = ["minigpt (pure Python)", "tiktoken (Rust)"]
    secs = [results["minigpt_s"], results["tiktoken_s"]]
    fig, ax = plt.subplots(figsize=(6, 2.4))  # narrow: still legible on a phone
    bars = ax.barh(names, secs, color=["#3f51b5", "#9e9e9e"])
    ax.bar_label(bars, labels=[f"{s:.2f} s" for s in secs], padding=3)
    ax.set_xlim(0, max(secs) * 1.3)  # room for the labels
    ax.set_xlabel(f"seconds to encode Tiny Shakespeare, GPT-2 vocabulary\n"
                  f"(median of {results['rounds']} rounds)")
    ax.invert_yaxis()
    fig.text(0.01, 0.01, machine_caption(machine), fontsize=7, color="#555")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(chart_path("tokenizer-speed"), metadata={"Date": None})
    plt.close(fig)


if __name__ == "__main__":
    run()
