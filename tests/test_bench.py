"""Profiling helpers, the roofline arithmetic and BLAS threads of chapter 21.

The engine's own code is what chapter 21 times, so the profiler must change
nothing: the logits of a profiled step equal the engine's. The reference model
is a small random GPT2LMHeadModel saved with safetensors and loaded by
minigpt.load_model (memory-mapped, like the benchmark). Hugging Face's
initialisation (std 0.02) gives near-uniform logits, where greedy choices hinge
on rounding, so weights are redrawn with std 1 and layer norms get noise of std
0.1. No test here times anything; speed targets live in benchmarks/.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_bandwidth import kernels
from benchmarks.bench_decode import copy_in_large_pieces, merge_races, targets
from minigpt import kvcache
from minigpt.bench import (
    StageTimer,
    blas_threads,
    bytes_per_token,
    decode_ceiling,
    float64_arrays,
    forward_flops,
    measure_bandwidth,
    peak_rss_bytes,
    profile_token,
    race_to_roofline,
    save_random_gpt2,
    time_in_turns,
    weight_bytes,
)
from minigpt.generation import generate
from minigpt.models import load_model
from minigpt.weights import GPTConfig
from tests.reference import require

SHAPE = dict(vocab_size=97, n_positions=64, n_embd=48, n_layer=3, n_head=4)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(transformers model, minigpt model loaded from the same safetensors file)."""
    torch = require("torch")
    transformers = require("transformers")
    folder = tmp_path_factory.mktemp("gpt2-small")
    torch.manual_seed(0)
    config = transformers.GPT2Config(**SHAPE, bos_token_id=None, eos_token_id=None)
    ref = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0, 1.0)
    ref.save_pretrained(folder, safe_serialization=True)
    return ref, load_model(folder)


def hf_greedy(ref, prompt: list[int], n: int) -> list[int]:
    torch = require("torch")
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.reference
def test_profile_token_times_every_stage_and_changes_nothing(saved):
    _, model = saved
    ids = np.array([1, 2, 3])
    a, b = model.empty_cache(), model.empty_cache()
    model.forward_cached(ids, a)
    model.forward_cached(ids, b)
    timer = StageTimer()
    got = profile_token(model, 4, a, timer)
    want = model.forward_cached(np.array([4]), b)[-1]
    np.testing.assert_array_equal(got, want)
    assert a.length == 4
    assert set(timer.seconds) == {"embedding + output head", "layer norms",
                                  "attention (qkv, scores, proj)", "feed-forward (MLP)"}
    assert timer.calls["layer norms"] == 2 * 3 + 1  # two per block, one final
    assert timer.calls["attention (qkv, scores, proj)"] == 3
    assert math.isclose(sum(timer.shares().values()), 1.0)
    assert kvcache.layer_norm.__module__ == "minigpt.layers"  # unwrapped again


def test_blas_threads_limits_the_blas_pools():
    threadpoolctl = require("threadpoolctl")
    def blas_counts():
        return {p["num_threads"] for p in threadpoolctl.threadpool_info()
                if p["user_api"] == "blas"}
    before = blas_counts()
    with blas_threads(1):
        assert blas_counts() <= {1}
    assert blas_counts() == before
    with blas_threads(None):  # leaves the library's own choice
        assert blas_counts() == before


def test_time_in_turns_runs_each_function_every_round():
    calls = []
    medians = time_in_turns({"a": lambda: calls.append("a"),
                             "b": lambda: calls.append("b")}, rounds=3)
    assert calls == ["a", "b"] * 3 and set(medians) == {"a", "b"}


def test_stage_timer_adds_up_per_stage():
    timer = StageTimer()
    for _ in range(3):
        with timer("a"):
            pass
    with pytest.raises(KeyError), timer("b"):
        raise KeyError("a stage that raises is still timed")
    assert timer.calls == {"a": 3, "b": 1}
    assert all(s >= 0 for s in timer.seconds.values())


def test_weight_bytes_counts_gpt2_124m_parameters():
    # GPT-2 124M: 124,439,808 parameters (tied head), float32 -> 4 bytes each
    C, V, T, L = 768, 50257, 1024, 12
    per_block = 12 * C * C + 13 * C  # qkv, proj, fc, proj weights; biases; 2 norms
    n = V * C + T * C + L * per_block + 2 * C
    assert n == 124_439_808
    params = {"wte": np.zeros((V, C), np.float32), "wpe": np.zeros((T, C), np.float32),
              "blocks": [{"w": np.zeros(per_block, np.float32)} for _ in range(L)],
              "ln_f": {"g": np.zeros(C, np.float32), "b": np.zeros(C, np.float32)}}
    assert weight_bytes(params) == 4 * n
    assert float64_arrays(params) == []
    params["ln_f"]["g"] = params["ln_f"]["g"].astype(np.float64)
    assert float64_arrays(params) == [(C,)]


def test_forward_flops_counts_each_block_weight_per_token_and_the_head_once():
    config = GPTConfig(vocab_size=10, n_ctx=4, n_embd=2, n_layer=1, n_head=1)
    n = 10 * 2 + 4 * 2 + 30  # wte, wpe, 30 block parameters
    assert forward_flops(config, n, 1) == 2 * (30 + 20)
    assert forward_flops(config, n, 5) == 2 * (30 * 5 + 20)


def test_roofline_arithmetic():
    config = GPTConfig()
    weights = 497_759_232
    # only one row of wpe is read; keys and values of 100 positions are
    read = bytes_per_token(config, weights, 100)
    assert read == weights - 1023 * 768 * 4 + 2 * 12 * 100 * 768 * 4
    assert decode_ceiling(500_000_000, 15.0) == pytest.approx(30.0)


def test_measure_bandwidth_reports_three_positive_rates():
    rates = measure_bandwidth(megabytes=4, repeats=2)
    assert set(rates) == {"read (matrix @ vector)", "read (sum)", "copy (read + write)"}
    assert all(r > 0 for r in rates.values())


def test_bandwidth_kernels_move_the_bytes_they_claim():
    found = kernels(4 * 2**20)
    fn, moved = found["read"]
    assert moved == 4 * 2**20 and fn().shape == (1024,)
    _, copied = found["copy"]
    assert copied == 2 * 4 * 2**20


def test_peak_rss_sees_a_new_touched_array():
    """In a fresh process, whose peak is what it holds now: 64 MB more, every page
    written, raise the peak by as much (here, earlier tests' larger peaks hide it)."""
    code = ("import numpy as np; from minigpt.bench import peak_rss_bytes; "
            "before = peak_rss_bytes(); big = np.ones(64 * 2**20 // 8); "
            "print(peak_rss_bytes() - before, big.nbytes, big[0])")
    grew, size, first = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=Path(__file__).parent.parent).stdout.split()
    assert int(grew) >= 0.9 * int(size) and first == "1.0"
    assert peak_rss_bytes() > 0  # and in this process it reads something


def test_targets_report_each_measured_value():
    r = {"decode": {"minigpt": {"decode_tok_s": 26.0},
                    "transformers": {"decode_tok_s": 20.0}},
         "ceiling_tok_s": 30.0,
         "roofline_race": {"fraction": {"minigpt": 26.0 / 30.0}},
         "prefill": {"lengths": [16, 512], "minigpt": [100, 90],
                     "transformers": [100, 100]},
         "memory": {"ratio": 1.2}}
    t = targets(r)
    assert t["decode vs transformers"] == {"measured": 1.3, "target": 1.3, "met": True}
    assert t["decode step vs bandwidth ceiling"]["met"] is True  # 26 / 30 = 0.867
    assert t["whole generation vs bandwidth ceiling"]["measured"] == pytest.approx(
        26 / 30)
    assert t["prefill 512 tokens vs transformers"]["measured"] == pytest.approx(0.9)
    assert t["peak RSS / weight file"]["met"] is True
    r["memory"]["ratio"] = 1.31
    assert targets(r)["peak RSS / weight file"]["met"] is False


def test_save_random_gpt2_loads_memory_mapped(tmp_path):
    config = GPTConfig(vocab_size=50, n_ctx=16, n_embd=8, n_layer=2, n_head=2)
    folder = save_random_gpt2(tmp_path / "m", config, std=0.5, seed=1)
    model = load_model(folder)
    assert model.config == config
    n = 50 * 8 + 16 * 8 + 2 * (12 * 8 * 8 + 13 * 8) + 2 * 8
    assert (folder / "model.safetensors").stat().st_size > 4 * n
    assert weight_bytes(model.params) == 4 * n
    wte = model.params["wte"]
    assert not wte.flags.owndata and not wte.flags.writeable  # a view of the file
    assert np.all(model.params["blocks"][1]["ln_2"]["g"] == 1)
    assert 0.3 < wte.std() < 0.7
    # cached and uncached generation agree on it
    ids = [1, 2, 3]
    assert list(generate(model, ids, 10)) == list(generate(model, ids, 10,
                                                           use_cache=False))


def test_race_to_roofline_reports_a_ceiling_and_the_engine(tmp_path):
    config = GPTConfig(vocab_size=64, n_ctx=32, n_embd=16, n_layer=2, n_head=2)
    model = load_model(save_random_gpt2(tmp_path / "m", config))
    race = race_to_roofline(model, position=10, rounds=2)
    assert set(race["tok_s"]) == {"minigpt"}
    assert race["bandwidth_gb_s"] > 0 and race["ceiling_tok_s"] > 0
    read = bytes_per_token(config, weight_bytes(model.params), 10)
    assert race["ceiling_tok_s"] == pytest.approx(race["bandwidth_gb_s"] * 1e9 / read)


def test_merge_races_takes_medians_of_rounds():
    races = [{"position": 5, "rounds": 3, "bandwidth_gb_s": bw, "ceiling_tok_s": c,
              "tok_s": {"lean": t}} for bw, c, t in [(10, 20, 18), (30, 60, 30),
                                                     (20, 40, 36)]]
    merged = merge_races(races)
    assert merged["rounds"] == 9 and merged["bandwidth_gb_s"] == 20
    assert merged["ceiling_tok_s"] == 40 and merged["tok_s"] == {"lean": 30}
    assert merged["fraction"]["lean"] == pytest.approx(0.9)  # of 0.9, 0.5, 0.9


def test_copy_in_large_pieces_copies_every_byte(tmp_path):
    (tmp_path / "a").mkdir()
    data = np.random.default_rng(0).bytes(3000)
    (tmp_path / "a" / "model.safetensors").write_bytes(data)
    (tmp_path / "a" / "config.json").write_text("{}")
    out = copy_in_large_pieces(tmp_path / "a", tmp_path / "b", piece=1024)
    assert (out / "model.safetensors").read_bytes() == data
    assert (out / "config.json").read_text() == "{}"
