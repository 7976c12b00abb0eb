"""The command line: `python -m minigpt COMMAND ...`.

Commands: `info` (the machine), `generate` (stream text from a checkpoint), and
`download` (fetch GPT-2 124M from the Hugging Face hub). A bad argument or a bad
checkpoint ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from minigpt import DEMO_MODEL

# the bundled demo model, once a later chapter ships it; until then --model is needed
DEFAULT_MODEL = DEMO_MODEL


# --8<-- [start:cli-checks]
def count(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def temperature(text: str) -> float:
    """argparse type: a float >= 0 (0 means greedy)."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value
# --8<-- [end:cli-checks]


def probability(text: str) -> float:
    """argparse type: a float in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minigpt", description="A transformer inference engine in NumPy."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print Python, NumPy, BLAS and CPU details")
    gen = commands.add_parser("generate", help="stream text that follows a prompt")
    gen.add_argument("prompt", help="the text to continue")
    has_demo = (DEFAULT_MODEL / "config.json").is_file()
    gen.add_argument("--model", type=Path, default=DEFAULT_MODEL if has_demo else None,
                     help="checkpoint folder: config.json, model.safetensors, "
                          "vocab.json, merges.txt"
                          + (" (default: the demo model)" if has_demo else ""))
    gen.add_argument("--max-new-tokens", type=count, default=100, metavar="N")
    gen.add_argument("--temperature", type=temperature, default=0.8, metavar="T",
                     help="0 is greedy; higher is more random (default 0.8)")
    gen.add_argument("--top-k", type=positive, default=None, metavar="K")
    gen.add_argument("--top-p", type=probability, default=None, metavar="P")
    gen.add_argument("--seed", type=int, default=None, metavar="S",
                     help="the same seed gives the same text")
    down = commands.add_parser("download", help="fetch a model from the Hugging "
                               "Face hub (needs internet)")
    down.add_argument("name", choices=["gpt2"], help="gpt2 is GPT-2 124M")
    down.add_argument("--dir", type=Path, default=None,
                      help="where to put it (default: ./NAME)")
    return parser


# --8<-- [start:cli-generate]
def run_generate(args: argparse.Namespace) -> None:
    """Load the model and tokenizer, then print the text as it is generated."""
    from minigpt.generate import generate, stream_text
    from minigpt.model import load_model
    from minigpt.tokenizer import load_tokenizer

    if args.model is None:
        raise ValueError("no model: pass --model DIR (a checkpoint folder; "
                         "`python -m minigpt download gpt2` fetches one)")
    if not args.model.is_dir():
        raise ValueError(f"--model {args.model}: no such directory")
    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise ValueError("the prompt is empty: give some text to continue")
    ids = generate(model, prompt, args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    sys.stdout.write(args.prompt)
    for piece in stream_text(tokenizer, ids):
        sys.stdout.write(piece)
        sys.stdout.flush()  # show each piece as soon as it exists
    sys.stdout.write("\n")
# --8<-- [end:cli-generate]


def run_download(args: argparse.Namespace) -> None:
    from minigpt.download import download_model

    folder = download_model(args.name, args.dir or Path(args.name), progress=sys.stderr)
    print(f"saved to {folder}; try: python -m minigpt generate --model {folder} "
          f'"Hello"')


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        from minigpt.info import describe

        print(describe())
        return 0
    try:
        run_generate(args) if args.command == "generate" else run_download(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError, RuntimeError) as exc:  # incl. WeightsError
        message = " ".join(str(exc).split())  # one line, whatever the message
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
