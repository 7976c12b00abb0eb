"""The command line: `python -m minigpt COMMAND ...`.

Commands: `info` (the version, the machine and its kernels), `generate` (stream
text from a checkpoint), `quantize` (write an int8 copy), `download` (fetch GPT-2,
SmolLM2, TinyLlama, Qwen or a GGUF file from the Hugging Face hub), and `chat`
(talk with an instruct model, through its chat template). `--model` takes a
checkpoint folder or a .gguf file. A bad argument or a bad checkpoint ends with
one line on stderr and exit code 2, never a traceback; every option's help shows
its default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

# generate's names are imported here, not inside run_generate, so that chapter 19's
# listing of run_generate, pasted, uses the reader's own generate and stream functions
from minigpt import DEMO_MODEL, __version__
from minigpt.generation import generate, stop_text, stream_text

# the bundled demo model, once a later chapter ships it; until then --model is needed
DEFAULT_MODEL = DEMO_MODEL
# what `download NAME` accepts (minigpt.download.MODELS, kept in step by a test)
DOWNLOADS = ["gpt2", "gpt2-medium", "smollm2-135m", "smollm2-135m-instruct",
             "tinyllama-1.1b-chat", "smollm2-360m-instruct", "qwen2.5-0.5b-instruct",
             "qwen3-0.6b", "qwen2.5-0.5b-instruct-q4_k_m", "qwen3-0.6b-q8_0",
             "smollm2-360m-instruct-q8_0"]

# one BLAS thread: on a busy machine two threads made decoding several times
# slower, and one loses little on a quiet one (chapter 21 measures both)
DEFAULT_THREADS = 1

# every help text ends with the option's default
HELP = argparse.ArgumentDefaultsHelpFormatter
MODEL_FORMS = ("a checkpoint folder: config.json with model.safetensors (or the "
               "shards model.safetensors.index.json lists), and tokenizer.json or "
               "vocab.json + merges.txt (or encoder.json + vocab.bpe); a folder "
               "written by `quantize` too; or a .gguf file (chapter 33)")


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


# --8<-- [start:cli-more-checks]
def fraction(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def factor(text: str) -> float:
    """argparse type: a float > 0 and finite."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def port(text: str) -> int:
    """argparse type: a TCP port, 0 to 65535 (0: any free one)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, got {value}")
    return value


def json_object(text: str) -> dict:
    """argparse type: a JSON object, such as {"enable_thinking": false}."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line and exit 2, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")
# --8<-- [end:cli-more-checks]


# --8<-- [start:cli-parser]
def build_parser() -> argparse.ArgumentParser:
    """The commands and their options; argparse checks each value on the way in."""
    parser = Parser(
        prog="python -m minigpt", description="A transformer inference engine "
        "in NumPy.")
    parser.add_argument("--version", action="version",
                        version=f"minigpt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print minigpt's version, Python, NumPy, BLAS, "
                        "the CPU and the kernels it runs")
    gen = commands.add_parser("generate", help="stream text that follows a prompt",
                              formatter_class=HELP)
    gen.add_argument("prompt", help="the text to continue; - reads it from standard "
                     "input")
    has_demo = (DEFAULT_MODEL / "config.json").is_file()
    add_model_options(gen, DEFAULT_MODEL if has_demo else None)
    add_sampling_options(gen, max_new_tokens=100, temp=0.8, top_p=None)
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT",
                     help="end the text before TEXT (repeatable); the model's "
                          "end-of-text token always ends it")
    gen.add_argument("--verbose", action="store_true", help="print the speed on "
                     "stderr: prompt and new tokens per second, time to first token")
    quant = commands.add_parser("quantize", help="write an int8 copy of a checkpoint",
                                formatter_class=HELP)
    quant.add_argument("src", type=Path, help="checkpoint folder to read")
    quant.add_argument("out", type=Path, help="folder to write (new or empty)")
    quant.add_argument("--scheme", choices=["q8_0", "int8"], default="q8_0",
                       help="q8_0: a scale per 32 weights; int8: per row")
    quant.add_argument("--force", action="store_true",
                       help="write into OUT even if it holds files already")
    down = commands.add_parser("download", help="fetch a model from the Hugging "
                               "Face hub (needs internet)", formatter_class=HELP)
    down.add_argument("name", choices=DOWNLOADS, help="gpt2 is GPT-2 124M, "
                      "gpt2-medium 355M; the others are LLaMA-style (chapter 22); "
                      "the *-q4_k_m and *-q8_0 ones are .gguf files")
    down.add_argument("--dir", type=Path, default=None,
                      help="where to put it (None: ./NAME)")
    add_chat_parser(commands)
    add_serve_parser(commands)
    return parser


def add_model_options(command: argparse.ArgumentParser, default: Path | None,
                      required: bool = False) -> None:
    """--model, and how to run it: --threads, --quantize."""
    add = command.add_argument
    add("--model", type=Path, default=default, required=required, metavar="DIR",
        help=MODEL_FORMS)
    add("--threads", type=count, default=DEFAULT_THREADS, metavar="N",
        help="threads, as measured in chapter 21; 0: one per core")
    add("--quantize", choices=["q8_0", "int8"], default=None,
        help="int8 weights (chapter 29): q8_0 in groups of 32, int8 one scale "
             "per row; None: as saved")


def add_sampling_options(command: argparse.ArgumentParser, max_new_tokens: int,
                         temp: float, top_p: float | None) -> None:
    """How many tokens and how to pick each: the knobs of chapter 18."""
    add = command.add_argument
    add("--max-new-tokens", type=count, default=max_new_tokens, metavar="N",
        help="the most tokens to write")
    add("--temperature", type=temperature, default=temp, metavar="T",
        help="0 is greedy; higher is more random")
    add("--top-k", type=positive, default=None, metavar="K",
        help="draw from the K most likely tokens only; None: all")
    add("--top-p", type=probability, default=top_p, metavar="P",
        help="draw from the fewest tokens holding probability P; None: all")
    add("--min-p", type=fraction, default=None, metavar="P",
        help="drop tokens less likely than P times the most likely; None: none")
    add("--repeat-penalty", type=factor, default=1.0, metavar="F",
        help="scale the scores of tokens already seen by 1/F (negative ones by "
             "F): above 1, text repeats itself less")
    add("--seed", type=count, default=None, metavar="S",
        help="the same seed gives the same text; None: a new one each run")


def sampling_knobs(args: argparse.Namespace) -> dict:
    """The sampling options as generate()'s keyword arguments."""
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                min_p=args.min_p, repetition_penalty=args.repeat_penalty,
                seed=args.seed)
# --8<-- [end:cli-parser]


# --8<-- [start:cli-chat]
def add_chat_parser(commands: argparse._SubParsersAction) -> None:
    """`chat`: its own subcommand, for instruct models with a chat template."""
    talk = commands.add_parser("chat", help="talk with an instruct model "
                               "(/bye, an empty line or Ctrl-D ends)",
                               formatter_class=HELP)
    add_model_options(talk, None, required=True)
    talk.add_argument("--system", default=None, metavar="TEXT",
                      help="a system message that opens the conversation")
    talk.add_argument("--chat-template-kwargs", type=json_object, default={},
                      metavar="JSON", help="more variables for the chat template, "
                      'e.g. \'{"enable_thinking": false}\'')
    add_sampling_options(talk, max_new_tokens=256, temp=0.7, top_p=0.9)
# --8<-- [end:cli-chat]


# --8<-- [start:cli-run-chat]
def run_chat(args: argparse.Namespace) -> None:
    """Load an instruct model, then answer each line typed until /bye."""
    from minigpt.bench import blas_threads
    from minigpt.chat import chat_loop, read_chat_config
    from minigpt.models import is_gguf, load_tokenizer

    if is_gguf(args.model):  # llama.cpp's one file: its template is inside
        from minigpt.gguf_tokenizer import read_gguf_chat_config as read_chat_config
    elif not args.model.is_dir():
        raise ValueError(f"--model {args.model}: no such directory")
    config = read_chat_config(args.model)  # first: no template, no loading
    model, tokenizer = open_model(args), load_tokenizer(args.model)
    if sys.stdin.isatty():  # a person types: arrow keys edit, up recalls a line
        import readline  # noqa: F401 (importing it is what turns it on for input())
    with blas_threads(args.threads or None):
        chat_loop(model, tokenizer, config, system=args.system,
                  template_kwargs=args.chat_template_kwargs,
                  max_new_tokens=args.max_new_tokens, **sampling_knobs(args))
# --8<-- [end:cli-run-chat]


# --8<-- [start:cli-generate]
def run_generate(args: argparse.Namespace) -> None:
    """Load the model and tokenizer, then print the text as it is generated."""
    from minigpt.bench import blas_threads
    from minigpt.models import is_gguf, load_tokenizer

    if args.model is None:
        raise ValueError("no model: pass --model DIR (a checkpoint folder; "
                         "`python -m minigpt download gpt2` fetches one)")
    if not (args.model.is_dir() or is_gguf(args.model)):
        raise ValueError(f"--model {args.model}: no such directory or .gguf file")
    model, tokenizer = open_model(args), load_tokenizer(args.model)
    text = sys.stdin.read() if args.prompt == "-" else args.prompt
    prompt = tokenizer.encode(text)
    if not prompt:
        raise ValueError("the prompt is empty: give some text to continue")
    n_ctx = model.config.n_ctx
    if len(prompt) > n_ctx:  # generate() keeps the last n_ctx: say so
        warn(f"the prompt is {len(prompt)} tokens, longer than the model's "
             f"context of {n_ctx}: only its last {n_ctx} tokens are read")
    # generate() ends at the model's end-of-text ids; --stop ends at text
    ids = generate(model, prompt, args.max_new_tokens, **sampling_knobs(args))
    clock: list[float] = []
    sys.stdout.write(text)
    with blas_threads(args.threads or None):  # the work happens in this loop
        for piece in stop_text(stream_text(tokenizer, timed(ids, clock)), args.stop):
            sys.stdout.write(piece)
            sys.stdout.flush()  # show each piece as soon as it exists
    sys.stdout.write("\n")
    if args.verbose:
        warn(speed(min(len(prompt), n_ctx), clock), "speed")
# --8<-- [end:cli-generate]


# --8<-- [start:cli-speed]
def timed(ids: Iterator[int], clock: list[float]) -> Iterator[int]:
    """The ids, noting the time they start and as each one arrives."""
    clock.append(time.perf_counter())
    for i in ids:
        clock.append(time.perf_counter())
        yield i


def speed(n_prompt: int, clock: list[float]) -> str:
    """Prompt and new tokens per second, and the time to the first token."""
    start, arrivals = clock[0], clock[1:]
    if not arrivals:
        return f"prompt {n_prompt} tokens; no new tokens"
    first = arrivals[0] - start  # the prefill, and one token sampled
    later = arrivals[-1] - arrivals[0]  # every token after the first
    rate = f"{(len(arrivals) - 1) / later:.1f}" if later > 0 else "-"
    return (f"prompt {n_prompt} tokens, {n_prompt / first:.1f} tok/s; "
            f"new {len(arrivals)} tokens, {rate} tok/s; "
            f"first token after {1000 * first:.0f} ms")


def warn(message: str, kind: str = "warning") -> None:
    """One line on stderr, where it never mixes with the text on stdout."""
    print(f"python -m minigpt: {kind}: {message}", file=sys.stderr)
# --8<-- [end:cli-speed]


# --8<-- [start:cli-quantize]
# building our machine code takes a fifth of a second: below this many bytes of
# weights, one thread of BLAS starts sooner and decodes about as fast
WORTH_COMPILING = 50_000_000


def open_model(args: argparse.Namespace):
    """--model's model: quantised if it was saved so or --quantize asks for it,
    its products run by our own kernels on --threads threads."""
    from minigpt.models import is_gguf, load_model, saved_scheme

    saved = saved_scheme(args.model)  # None for a float checkpoint
    from minigpt.bench import weight_bytes
    from minigpt.kernels import kernel_model
    from minigpt.threads import set_kernel_threads

    if args.quantize and saved and args.quantize != saved:
        raise ValueError(f"--quantize {args.quantize}: {args.model} holds {saved} "
                         f"weights already")
    if not (args.quantize or saved):
        model = load_model(args.model)
        if weight_bytes(model.params) > WORTH_COMPILING or args.threads != 1:
            model = kernel_model(model)  # float32: our code for a few tokens
    elif is_gguf(args.model) and args.quantize == "q8_0":  # blocks as stored
        from minigpt.gguf_q8_0 import load_gguf_q8_0

        model = load_gguf_q8_0(args.model)
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
    if args.out.exists() and not args.force and not (
            args.out.is_dir() and not any(args.out.iterdir())):
        raise ValueError(f"{args.out} exists and is not empty: nothing written "
                         f"(--force writes into it)")
    out = quantize_checkpoint(args.src, args.out, args.scheme)
    sizes = [sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6
             for folder in (args.src, out)]  # one file, or shards
    print(f"saved {args.scheme} to {out}: {sizes[1]:.0f} MB of weights, from "
          f"{sizes[0]:.0f} MB; try: python -m minigpt generate --model {out} "
          f'"Hello"')
# --8<-- [end:cli-quantize]


# --8<-- [start:cli-serve]
def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    """`serve`: an OpenAI-compatible HTTP server with continuous batching."""
    serve = commands.add_parser("serve", help="serve the OpenAI API (Ctrl-C stops)",
                                formatter_class=HELP)
    has_demo = (DEFAULT_MODEL / "config.json").is_file()
    add_model_options(serve, DEFAULT_MODEL if has_demo else None, required=not has_demo)
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen "
                       "on; 127.0.0.1 is this machine only")
    serve.add_argument("--port", type=port, default=8000, help="0: any free port")
    serve.add_argument("--max-batch", type=positive, default=8, metavar="N",
                       help="the most requests decoded in one step")


def run_serve(args: argparse.Namespace) -> None:
    """Load the model, start the engine and the server, wait for Ctrl-C."""
    import importlib.util
    if not all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn")):
        raise RuntimeError("serve needs FastAPI and uvicorn: pip install "
                           "'minigpt[serve]'")
    from minigpt.bench import blas_threads
    from minigpt.gguf_tokenizer import chat_config as read_chat_config  # .gguf too
    from minigpt.models import load_tokenizer
    from minigpt.paged import pool_for
    from minigpt.scheduler import Scheduler
    from minigpt.server import Engine, create_app, start_server

    if not args.model.exists():  # a folder, or a file its loader reads
        raise ValueError(f"--model {args.model}: no such file or directory")
    model, tokenizer = open_model(args), load_tokenizer(args.model)
    try:
        chat = read_chat_config(args.model)
    except ValueError:  # no template: /v1/chat/completions answers 400
        chat = None
    blocks = args.max_batch * -(-model.config.n_ctx // 16)  # a full window each
    engine = Engine(Scheduler(model, tokenizer, pool_for(model, blocks, 16),
                              max_batch=args.max_batch))
    name = args.model.resolve().name
    server, thread, url = start_server(create_app(engine, tokenizer, name, chat),
                                       args.host, args.port)
    print(f"serving {name} on {url} (Ctrl-C stops)", flush=True)
    try:
        with blas_threads(args.threads or None):
            while thread.is_alive():
                thread.join(0.5)  # a timeout: Ctrl-C still reaches this thread
    finally:
        server.should_exit = True
        thread.join()
        engine.stop()
# --8<-- [end:cli-serve]


# --8<-- [start:cli-main]
def run_download(args: argparse.Namespace) -> None:
    """Fetch a model from the hub into a folder, and say how to run it."""
    from minigpt.download import download_model

    folder = download_model(args.name, args.dir or Path(args.name), progress=sys.stderr)
    print(f"saved to {folder}; try: python -m minigpt generate --model {folder} "
          f'"Hello"')


def run_info(args: argparse.Namespace) -> None:
    """minigpt's version, the machine (chapter 1) and the kernels it runs."""
    from minigpt.info import describe, kernel_report

    lines = [*describe().splitlines(), kernel_report()]
    rows = [("minigpt", __version__), *(line.split(" : ", 1) for line in lines)]
    width = max(len(key.strip()) for key, _ in rows)
    print("\n".join(f"{key.strip():<{width}} : {value}" for key, value in rows))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        commands = {"info": run_info, "generate": run_generate,
                    "download": run_download, "quantize": run_quantize,
                    "chat": run_chat, "serve": run_serve}
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
