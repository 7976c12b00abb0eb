"""The command line: `python -m minigpt COMMAND ...`.

Commands: `info` (the machine), `generate` (stream text from a checkpoint),
`download` (fetch GPT-2, SmolLM2 or TinyLlama from the Hugging Face hub), and `chat`
(talk with an instruct model, through its chat template). A bad argument or a bad
checkpoint ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# generate's names are imported here, not inside run_generate, so that chapter 19's
# listing of run_generate, pasted, uses the reader's own generate and stream functions
from minigpt import DEMO_MODEL
from minigpt.generate import generate, stop_text, stream_text

# the bundled demo model, once a later chapter ships it; until then --model is needed
DEFAULT_MODEL = DEMO_MODEL
# what `download NAME` accepts (minigpt.download.MODELS, kept in step by a test)
DOWNLOADS = ["gpt2", "gpt2-medium", "smollm2-135m", "smollm2-135m-instruct",
             "tinyllama-1.1b-chat"]

# one BLAS thread: on a busy machine two threads made decoding several times
# slower, and one loses little on a quiet one (chapter 21 measures both)
DEFAULT_THREADS = 1


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


def probability(text: str) -> float:
    """argparse type: a float in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value
# --8<-- [end:cli-checks]


# --8<-- [start:cli-parser]
def build_parser() -> argparse.ArgumentParser:
    """The commands and their options; argparse checks each value on the way in."""
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
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT",
                     help="end the text before TEXT (repeatable); the model's "
                          "end-of-text token always ends it")
    gen.add_argument("--threads", type=count, default=DEFAULT_THREADS, metavar="N",
                     help=f"threads (default {DEFAULT_THREADS}, measured in "
                          f"chapter 21; 0: one per core)")
    gen.add_argument("--quantize", choices=["q8_0", "int8"], default=None,
                     help="int8 weights (chapter 23): q8_0 in groups of 32, "
                          "int8 one scale per row")
    quant = commands.add_parser("quantize", help="write an int8 copy of a checkpoint")
    quant.add_argument("src", type=Path, help="checkpoint folder to read")
    quant.add_argument("out", type=Path, help="folder to write")
    quant.add_argument("--scheme", choices=["q8_0", "int8"], default="q8_0",
                       help="q8_0: a scale per 32 weights (default); int8: per row")
    down = commands.add_parser("download", help="fetch a model from the Hugging "
                               "Face hub (needs internet)")
    down.add_argument("name", choices=DOWNLOADS, help="gpt2 is GPT-2 124M, "
                      "gpt2-medium 355M; the others are LLaMA-style (chapter 22)")
    down.add_argument("--dir", type=Path, default=None,
                      help="where to put it (default: ./NAME)")
    add_chat_parser(commands)
    return parser
# --8<-- [end:cli-parser]


# --8<-- [start:cli-chat]
def add_chat_parser(commands: argparse._SubParsersAction) -> None:
    """`chat`: its own subcommand, for instruct models with a chat template."""
    talk = commands.add_parser("chat", help="talk with an instruct model "
                               "(empty line or Ctrl-D ends)")
    talk.add_argument("--model", type=Path, required=True,
                      help="an instruct checkpoint, e.g. from `download "
                           "smollm2-135m-instruct`")
    talk.add_argument("--system", default=None, metavar="TEXT",
                      help="a system message that opens the conversation")
    talk.add_argument("--max-new-tokens", type=count, default=256, metavar="N")
    talk.add_argument("--temperature", type=temperature, default=0.7, metavar="T")
    talk.add_argument("--top-p", type=probability, default=0.9, metavar="P")
    talk.add_argument("--seed", type=int, default=None, metavar="S")
# --8<-- [end:cli-chat]


# --8<-- [start:cli-run-chat]
def run_chat(args: argparse.Namespace) -> None:
    """Load an instruct model, then answer each line typed until an empty one."""
    from minigpt.chat import chat_loop, read_chat_config
    from minigpt.models import load_model, load_tokenizer

    if not args.model.is_dir():
        raise ValueError(f"--model {args.model}: no such directory")
    config = read_chat_config(args.model)  # first: no template, no loading
    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    chat_loop(model, tokenizer, config, system=args.system,
              max_new_tokens=args.max_new_tokens, temperature=args.temperature,
              top_p=args.top_p, seed=args.seed)
# --8<-- [end:cli-run-chat]


# --8<-- [start:cli-generate]
def run_generate(args: argparse.Namespace) -> None:
    """Load the model and tokenizer, then print the text as it is generated."""
    from minigpt.bench import blas_threads
    from minigpt.models import load_tokenizer

    if args.model is None:
        raise ValueError("no model: pass --model DIR (a checkpoint folder; "
                         "`python -m minigpt download gpt2` fetches one)")
    if not args.model.is_dir():
        raise ValueError(f"--model {args.model}: no such directory")
    model, tokenizer = open_model(args), load_tokenizer(args.model)
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise ValueError("the prompt is empty: give some text to continue")
    # generate() ends at the model's end-of-text ids; --stop ends at text
    ids = generate(model, prompt, args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    sys.stdout.write(args.prompt)
    with blas_threads(args.threads or None):  # the work happens in this loop
        for piece in stop_text(stream_text(tokenizer, ids), args.stop):
            sys.stdout.write(piece)
            sys.stdout.flush()  # show each piece as soon as it exists
    sys.stdout.write("\n")
# --8<-- [end:cli-generate]


# --8<-- [start:cli-quantize]
def open_model(args: argparse.Namespace):
    """--model's model: quantised if it was saved so or --quantize asks for it,
    with the threads given to our own kernels when there is more than one."""
    from minigpt.models import load_model, saved_scheme

    saved = saved_scheme(args.model)  # None for a float checkpoint
    if not (args.quantize or saved) and args.threads == 1:
        return load_model(args.model)  # one BLAS thread, nothing else: a faster start
    from minigpt.threads import set_kernel_threads, threaded_model

    if args.quantize and saved and args.quantize != saved:
        raise ValueError(f"--quantize {args.quantize}: {args.model} holds {saved} "
                         f"weights already")
    if not (args.quantize or saved):
        model = threaded_model(load_model(args.model))  # threads of our own
    else:
        from minigpt.quantize import load_quantized, quantize_model

        model = load_quantized(args.model) if saved else \
            quantize_model(load_model(args.model), args.quantize)
    # our threads share out every product; BLAS keeps one thread inside each
    set_kernel_threads(args.threads or None)
    args.threads = 1
    return model


def run_quantize(args: argparse.Namespace) -> None:
    """Write an int8 copy of a checkpoint folder."""
    from minigpt.quantize import quantize_checkpoint

    if not args.src.is_dir():
        raise ValueError(f"{args.src}: no such directory")
    out = quantize_checkpoint(args.src, args.out, args.scheme)
    sizes = [(f / "model.safetensors").stat().st_size / 1e6 for f in (args.src, out)]
    print(f"saved {args.scheme} to {out}: {sizes[1]:.0f} MB of weights, from "
          f"{sizes[0]:.0f} MB; try: python -m minigpt generate --model {out} "
          f'"Hello"')
# --8<-- [end:cli-quantize]


# --8<-- [start:cli-main]
def run_download(args: argparse.Namespace) -> None:
    from minigpt.download import download_model

    folder = download_model(args.name, args.dir or Path(args.name), progress=sys.stderr)
    print(f"saved to {folder}; try: python -m minigpt generate --model {folder} "
          f'"Hello"')


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        from minigpt.info import describe, kernel_report

        print(describe())
        print(kernel_report())
        return 0
    try:
        commands = {"generate": run_generate, "download": run_download,
                    "quantize": run_quantize, "chat": run_chat}
        commands[args.command](args)
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
# --8<-- [end:cli-main]


if __name__ == "__main__":
    sys.exit(main())
