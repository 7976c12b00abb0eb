"""`python -m minigpt generate`: streams text, and refuses bad input in one line.

The checkpoint is written here without any reference library: a random model
from test_generate, saved as safetensors by hand (the format is a JSON header and
raw bytes), with a byte-level BPE tokenizer trained on a line of text. The
expected text is computed through the Python API; the CLI must print the same.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minigpt
from minigpt.__main__ import main
from minigpt.tokenizer import ByteBPE, train_bpe
from tests.test_generate import random_model

TEXT = "To be, or not to be, that is the question: whether 'tis nobler. " * 20
BLOCK = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.c_attn": ("attn", "c_attn"),
         "attn.c_proj": ("attn", "c_proj"), "mlp.c_fc": ("mlp", "c_fc"),
         "mlp.c_proj": ("mlp", "c_proj")}


def save_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """A minimal safetensors writer: 8-byte header size, JSON header, F32 data."""
    header, blobs, offset = {}, [], 0
    for name, x in tensors.items():
        data = np.ascontiguousarray(x, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(x.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def write_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A tiny GPT-2 checkpoint folder: config, weights, vocab.json, merges.txt."""
    tok = ByteBPE(*train_bpe(TEXT, vocab_size=300))
    model = random_model(seed=seed, vocab_size=len(tok.vocab), n_ctx=64, n_embd=32)
    p, cfg = model.params, model.config
    tensors = {"wte.weight": p["wte"], "wpe.weight": p["wpe"],
               "ln_f.weight": p["ln_f"]["g"], "ln_f.bias": p["ln_f"]["b"]}
    for i, block in enumerate(p["blocks"]):
        for hf, ours in BLOCK.items():
            sub = block[ours] if isinstance(ours, str) else block[ours[0]][ours[1]]
            w, b = (sub["g"], sub["b"]) if "ln" in hf else (sub["w"], sub["b"])
            tensors[f"h.{i}.{hf}.weight"], tensors[f"h.{i}.{hf}.bias"] = w, b
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, folder / "model.safetensors")
    config = {"model_type": "gpt2", "vocab_size": cfg.vocab_size,
              "n_positions": cfg.n_ctx, "n_embd": cfg.n_embd,
              "n_layer": cfg.n_layer, "n_head": cfg.n_head}
    (folder / "config.json").write_text(json.dumps(config))
    tok.save(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("tiny"))


def expected_text(folder: Path, prompt: str, n: int, **knobs) -> str:
    model, tok = minigpt.load_model(folder), minigpt.load_tokenizer(folder)
    ids = list(minigpt.generate(model, tok.encode(prompt), n, **knobs))
    return prompt + tok.decode(ids) + "\n"


def test_checkpoint_round_trips(checkpoint):
    model = minigpt.load_model(checkpoint)
    ref = random_model(seed=0, vocab_size=model.config.vocab_size, n_ctx=64,
                       n_embd=32)
    ids = np.array([1, 50, model.config.vocab_size - 1])
    # same numbers; BLAS may round differently on the file's unaligned data
    np.testing.assert_allclose(model.forward(ids), ref.forward(ids), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("args, knobs", [
    (["--temperature", "0"], dict(temperature=0.0)),
    (["--temperature", "0.9", "--top-k", "20", "--seed", "3"],
     dict(temperature=0.9, top_k=20, seed=3)),
    (["--top-p", "0.8", "--seed", "1"], dict(temperature=0.8, top_p=0.8, seed=1)),
])
def test_generate_prints_the_api_text(checkpoint, capsys, args, knobs):
    code = main(["generate", "To be", "--model", str(checkpoint),
                 "--max-new-tokens", "25", *args])
    out = capsys.readouterr()
    assert code == 0 and out.err == ""
    assert out.out == expected_text(checkpoint, "To be", 25, **knobs)


def test_generate_as_a_process_streams_and_is_repeatable(checkpoint):
    cmd = [sys.executable, "-m", "minigpt", "generate", "whether", "--model",
           str(checkpoint), "--max-new-tokens", "15", "--seed", "7"]
    runs = [subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stdout == expected_text(checkpoint, "whether", 15,
                                           temperature=0.8, seed=7)


def test_info_still_works(capsys):
    assert main(["info"]) == 0
    assert "numpy" in capsys.readouterr().out.lower()


def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("extra, message", [
    (["--max-new-tokens", "-1"], "must be >= 0, got -1"),
    (["--temperature", "-0.5"], "must be >= 0, got -0.5"),
    (["--top-k", "0"], "must be >= 1, got 0"),
    (["--top-p", "1.5"], r"must be in (0, 1], got 1.5"),
    (["--max-new-tokens", "ten"], "invalid count value"),
])
def test_bad_numbers_are_one_line_errors(checkpoint, capsys, extra, message):
    line = one_line_error(capsys, ["generate", "hi", "--model", str(checkpoint),
                                   *extra])
    assert message in line and line.startswith("python -m minigpt generate: error")


def test_missing_model_directory(tmp_path, capsys):
    line = one_line_error(capsys, ["generate", "hi", "--model",
                                   str(tmp_path / "nope")])
    assert line == f"python -m minigpt: error: --model {tmp_path / 'nope'}: " \
                   f"no such directory or .gguf file"


def test_no_model_given(tmp_path, monkeypatch, capsys):
    import minigpt.__main__ as cli
    monkeypatch.setattr(cli, "DEFAULT_MODEL", tmp_path / "demo")  # no demo here
    line = one_line_error(capsys, ["generate", "hi"])
    assert "no model: pass --model DIR" in line


def test_the_demo_folder_is_the_default_model(checkpoint, monkeypatch, capsys):
    import minigpt.__main__ as cli
    monkeypatch.setattr(cli, "DEFAULT_MODEL", checkpoint)  # holds a config.json
    assert main(["generate", "To be", "--max-new-tokens", "5", "--seed", "2"]) == 0
    assert capsys.readouterr().out == expected_text(checkpoint, "To be", 5,
                                                     temperature=0.8, seed=2)


def test_not_a_checkpoint(tmp_path, checkpoint, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    assert "no config.json" in one_line_error(
        capsys, ["generate", "hi", "--model", str(folder)])
    for name in ("config.json", "vocab.json", "merges.txt"):
        (folder / name).write_bytes((checkpoint / name).read_bytes())
    (folder / "model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad")
    assert "model.safetensors" in one_line_error(
        capsys, ["generate", "hi", "--model", str(folder)])
    (folder / "model.safetensors").write_bytes((checkpoint / "model.safetensors")
                                               .read_bytes())
    (folder / "config.json").write_text("{not json")
    assert "config.json" in one_line_error(
        capsys, ["generate", "hi", "--model", str(folder)])


def test_empty_prompt(checkpoint, capsys):
    line = one_line_error(capsys, ["generate", "", "--model", str(checkpoint)])
    assert "the prompt is empty" in line


def test_generation_stops_at_the_checkpoints_end_of_text_id(checkpoint, tmp_path,
                                                           capsys):
    free = expected_text(checkpoint, "To be", 25, temperature=0.0)
    model, tok = minigpt.load_model(checkpoint), minigpt.load_tokenizer(checkpoint)
    ids = list(minigpt.generate(model, tok.encode("To be"), 25))
    eos = ids[6]  # a token greedy decoding reaches: the text must end before it
    folder = tmp_path / "eos"
    folder.mkdir()
    for path in checkpoint.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    assert main(["generate", "To be", "--model", str(folder), "--max-new-tokens",
                 "25", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out == "To be" + tok.decode(ids[:ids.index(eos)]) + "\n"
    assert len(out) < len(free)


def test_stop_text_ends_the_output_before_it(checkpoint, capsys):
    free = expected_text(checkpoint, "To be", 40, temperature=0.0)
    generated = free[len("To be"):-1]
    stop = generated[10:13]
    cut = generated.index(stop)
    assert main(["generate", "To be", "--model", str(checkpoint), "--max-new-tokens",
                 "40", "--temperature", "0", "--stop", "zzz", "--stop", stop]) == 0
    assert capsys.readouterr().out == "To be" + generated[:cut] + "\n"


def test_threads_go_to_our_kernels_and_blas_keeps_one(checkpoint, capsys,
                                                      monkeypatch):
    import minigpt.bench as bench
    import minigpt.threads as threads
    blas, kernel, texts = [], [], []
    real_blas, real_kernel = bench.blas_threads, threads.set_kernel_threads
    monkeypatch.setattr(bench, "blas_threads", lambda n: blas.append(n) or real_blas(n))
    monkeypatch.setattr(threads, "set_kernel_threads",
                        lambda n: kernel.append(n) or real_kernel(n))
    # (arguments, BLAS threads, kernel threads): ours take them, BLAS keeps one
    cases = [([], 1, 1), (["--threads", "2"], 1, 2), (["--threads", "0"], 1, None)]
    for args, want_blas, want_kernel in cases:
        kernel.clear()
        assert main(["generate", "To be", "--model", str(checkpoint), "--temperature",
                     "0", "--max-new-tokens", "8", *args]) == 0
        texts.append(capsys.readouterr().out)
        assert blas[-1] == want_blas
        assert kernel == [want_kernel]
    assert texts[1] == texts[0]  # the same greedy text, whoever multiplies
    real_kernel(1)
    assert "must be >= 0, got -1" in one_line_error(
        capsys, ["generate", "hi", "--model", str(checkpoint), "--threads", "-1"])


def subcommands(parser):
    """name -> subparser, for every command of the CLI."""
    import argparse

    action = next(a for a in parser._actions
                  if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_shows_its_default_and_model_names_every_form():
    from minigpt.__main__ import build_parser

    for name, sub in subcommands(build_parser()).items():
        text = "".join(sub.format_help().split())  # no line breaks, no spaces
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.dest)
                shown = f"{action.help} (default: {action.default})"
                assert "".join(shown.split()) in text, (name, action.dest)
        if name in ("generate", "chat"):
            for form in ("config.json", "model.safetensors.index.json",
                         "tokenizer.json", "vocab.json+merges.txt", "quantize"):
                assert form in text, (name, form)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"minigpt {minigpt.__version__}\n"


def test_info_shows_the_version_and_the_kernels(capsys):
    assert main(["info"]) == 0
    rows = dict(line.split(" : ", 1) for line in capsys.readouterr().out.splitlines())
    rows = {key.strip(): value for key, value in rows.items()}
    assert rows["minigpt"] == minigpt.__version__
    from minigpt.machine_code import machine_code

    own = "our machine code" if machine_code() else "NumPy on dequantised tiles"
    assert rows["kernels"].startswith(own)
    assert {"cores", "numpy", "blas"} <= rows.keys()


@pytest.mark.parametrize("args, knobs", [
    (["--repeat-penalty", "1.5", "--temperature", "0"],
     dict(temperature=0.0, repetition_penalty=1.5)),
    (["--min-p", "0.2", "--seed", "4"], dict(temperature=0.8, min_p=0.2, seed=4)),
])
def test_repeat_penalty_and_min_p_reach_generate(checkpoint, capsys, args, knobs):
    assert main(["generate", "To be", "--model", str(checkpoint),
                 "--max-new-tokens", "25", *args]) == 0
    out = capsys.readouterr().out
    assert out == expected_text(checkpoint, "To be", 25, **knobs)
    if "repetition_penalty" in knobs:  # and it changes the greedy text
        assert out != expected_text(checkpoint, "To be", 25, temperature=0.0)


@pytest.mark.parametrize("extra, message", [
    (["--repeat-penalty", "0"], "must be > 0, got 0"),
    (["--min-p", "1.5"], "must be in [0, 1], got 1.5"),
])
def test_bad_new_knobs_are_one_line_errors(checkpoint, capsys, extra, message):
    line = one_line_error(capsys, ["generate", "hi", "--model", str(checkpoint),
                                   *extra])
    assert message in line


def test_verbose_speed_goes_to_stderr_and_the_text_to_stdout(checkpoint, capsys):
    assert main(["generate", "To be", "--model", str(checkpoint), "--temperature",
                 "0", "--max-new-tokens", "12", "--verbose"]) == 0
    out = capsys.readouterr()
    assert out.out == expected_text(checkpoint, "To be", 12, temperature=0.0)
    line, = out.err.splitlines()
    n_prompt = len(minigpt.load_tokenizer(checkpoint).encode("To be"))
    pattern = (rf"python -m minigpt: speed: prompt {n_prompt} tokens, [\d.]+ tok/s; "
               r"new 12 tokens, [\d.]+ tok/s; first token after \d+ ms")
    import re
    assert re.fullmatch(pattern, line), line


def test_the_prompt_dash_reads_standard_input(checkpoint, capsys, monkeypatch):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("To be"))
    assert main(["generate", "-", "--model", str(checkpoint), "--temperature", "0",
                 "--max-new-tokens", "9"]) == 0
    assert capsys.readouterr().out == expected_text(checkpoint, "To be", 9,
                                                     temperature=0.0)


def test_an_over_long_prompt_is_warned_about_with_the_context_size(checkpoint,
                                                                   capsys):
    text = "To be, or not to be " * 30  # far more than n_ctx = 64 tokens
    assert main(["generate", text, "--model", str(checkpoint), "--temperature",
                 "0", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr()
    assert out.out == expected_text(checkpoint, text, 3, temperature=0.0)
    line, = out.err.splitlines()
    assert "warning" in line and "context of 64" in line


def test_quantize_refuses_a_folder_that_is_not_empty(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")  # say, another checkpoint
    line = one_line_error(capsys, ["quantize", str(checkpoint), str(out)])
    assert str(out) in line and "--force" in line
    assert [p.name for p in out.iterdir()] == ["config.json"]
    assert (out / "config.json").read_text() == "{}"  # untouched
    assert main(["quantize", str(checkpoint), str(out), "--force"]) == 0
    assert "saved q8_0" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine
    assert main(["quantize", str(checkpoint), str(empty)]) == 0


def test_quantizing_shards_writes_no_float_weights(tmp_path, capsys):
    from tests.llama_layouts import write_llama

    src = write_llama(tmp_path / "src", "byte-level", chat=True, shards=3)
    assert main(["quantize", str(src), str(tmp_path / "q"), "--scheme", "int8"]) == 0
    capsys.readouterr()
    written = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert written == ["config.json", "generation_config.json", "model.safetensors",
                       "tokenizer.json", "tokenizer_config.json"]
    from minigpt.quantize import load_quantized

    assert load_quantized(tmp_path / "q").config.n_layer == 2  # a whole model
