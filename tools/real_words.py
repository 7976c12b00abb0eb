"""Measure how much of the demo model's text is made of real words of its corpus.

Generates text from a prompt with the command line's default sampling settings
(read from `python -m minigpt generate`'s own parser, so the two cannot drift
apart) at a fixed seed, splits it into words (letters and inner apostrophes,
case-insensitive) and counts the words that also occur in Tiny Shakespeare.

    python tools/real_words.py          # prints the figure
    python tools/real_words.py --save   # and writes minigpt/demo/evaluation.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minigpt.__main__ import DEFAULT_MODEL, build_parser  # noqa: E402
from minigpt.generation import generate, stream_text  # noqa: E402
from minigpt.models import load_model, load_tokenizer  # noqa: E402

CORPUS = ROOT / "data" / "tinyshakespeare.txt"


def words(text: str) -> list[str]:
    """Lower-case words: runs of letters and apostrophes, outer apostrophes cut."""
    found = (w.strip("'") for w in re.findall(r"[A-Za-z']+", text.lower()))
    return [w for w in found if w]


def cli_defaults() -> dict:
    """The sampling settings `python -m minigpt generate` uses when given none."""
    args = build_parser().parse_args(["generate", "x"])
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}


def measure(prompt: str = "ROMEO:", max_new_tokens: int = 600, seed: int = 0,
            model_dir: Path = DEFAULT_MODEL, corpus: Path = CORPUS) -> dict:
    """Generate once and count the generated words that occur in the corpus."""
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    settings = cli_defaults()
    ids = list(generate(model, tok.encode(prompt), max_new_tokens, seed=seed,
                        **settings))
    text = "".join(stream_text(tok, ids))  # what the command line prints
    known = set(words(corpus.read_text(encoding="utf-8")))
    generated = words(text)
    real = sum(w in known for w in generated)
    return {"prompt": prompt, "seed": seed, "max_new_tokens": max_new_tokens,
            "settings": settings, "words": len(generated), "real_words": real,
            "real_word_rate": round(real / len(generated), 4),
            "not_in_corpus": sorted({w for w in generated if w not in known}),
            "text": prompt + text}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt", default="ROMEO:")
    p.add_argument("--max-new-tokens", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--save", action="store_true",
                   help="write the result into MODEL/evaluation.json")
    args = p.parse_args(argv)
    result = measure(args.prompt, args.max_new_tokens, args.seed, args.model)
    print(result["text"])
    print(f"\n{result['real_words']} of {result['words']} words are in the corpus: "
          f"{result['real_word_rate']:.1%} (seed {args.seed}, {result['settings']})")
    print(f"not in the corpus: {result['not_in_corpus']}")
    if args.save:
        (args.model / "evaluation.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
