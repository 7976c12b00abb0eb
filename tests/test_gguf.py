"""GGUF files written by gguf-py: the reader, its refusals, and whole models ≡
transformers, in F32, F16, Q8_0 and Q4_0."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

import minigpt
from minigpt.gguf import GGUFError, read_gguf, read_tensor
from minigpt.gguf_models import load_gguf
from tests.gguf_files import write_gguf
from tests.reference import logits_of, rel_error, require

SHAPES = {  # tiny, but every input width a multiple of 32 (the block size)
    "llama": dict(vocab_size=96, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=48),
    "qwen2": dict(vocab_size=96, hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=48, tie_word_embeddings=True),
    "qwen3": dict(vocab_size=96, hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                  head_dim=32, max_position_embeddings=48),
    "gpt2": dict(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=48),
}
CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
           "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
           "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
           "gpt2": ("GPT2Config", "GPT2LMHeadModel")}
# how far each type's logits may move from the float32 model's (relative)
BOUNDS = {"F32": 1e-5, "F16": 5e-3, "Q8_0": 3e-2, "Q4_0": 0.3}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8,
          "rope_theta": 500000.0}


def torch_model(arch: str, seed: int = 0, **changes):
    torch = require("torch")
    transformers = require("transformers")
    torch.manual_seed(seed)
    config_class, model_class = (getattr(transformers, n) for n in CLASSES[arch])
    config = config_class(**{**SHAPES[arch], **changes}, bos_token_id=None,
                          eos_token_id=None, pad_token_id=None)
    model = model_class(config).eval()
    with torch.no_grad():  # norm gains and biases away from 1 and 0
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.mark.reference
@pytest.mark.parametrize("qtype", list(BOUNDS))
@pytest.mark.parametrize("arch", list(SHAPES))
def test_logits_equal_transformers(tmp_path, arch, qtype):
    ref = torch_model(arch)
    ids = np.random.default_rng(1).integers(0, 96, 48)
    original = logits_of(ref, ids)
    path = write_gguf(tmp_path / f"{arch}.gguf", ref, arch, qtype)  # rounds ref
    model = minigpt.load_model(path)
    ours = model.forward(ids)
    # the file's own numbers: as exact as float32 allows (Q8_0 matrices stay
    # packed in load_model and round the token to Q8_0 too: decoded, they are exact)
    exact = load_gguf(path).forward(ids) if qtype == "Q8_0" else ours
    assert rel_error(exact, logits_of(ref, ids)) < 2e-5
    # against the float32 model: within the type's rounding
    assert rel_error(ours, original) < BOUNDS[qtype]


@pytest.mark.reference
def test_llama3_rope_freqs_from_gguf(tmp_path):
    ref = torch_model("llama", rope_parameters=LLAMA3)
    path = write_gguf(tmp_path / "llama3.gguf", ref, "llama")
    model = minigpt.load_model(path)
    assert max(model.config.rope_divisors) == pytest.approx(8.0)
    ids = np.random.default_rng(2).integers(0, 96, 48)
    assert rel_error(model.forward(ids), logits_of(ref, ids)) < 2e-5


@pytest.mark.reference
def test_metadata_and_tensors_read_as_written(tmp_path):
    gguf = require("gguf")
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    values = {"a.u8": (w.add_uint8, 7), "a.i8": (w.add_int8, -7),
              "a.u16": (w.add_uint16, 65535), "a.i16": (w.add_int16, -300),
              "a.u32": (w.add_uint32, 2**32 - 1), "a.i32": (w.add_int32, -2**31),
              "a.f32": (w.add_float32, 0.5), "a.bool": (w.add_bool, True),
              "a.str": (w.add_string, "héllo"), "a.u64": (w.add_uint64, 2**64 - 1),
              "a.i64": (w.add_int64, -2**63), "a.f64": (w.add_float64, 0.1),
              "a.strs": (w.add_array, ["x", "", "ÿ"]),
              "a.nums": (w.add_array, [1, 2, 3])}
    for key, (add, value) in values.items():
        add(key, value)
    x = np.arange(64 * 3, dtype=np.float32).reshape(3, 64)
    w.add_tensor("t.weight", x)
    w.add_tensor("q.weight", gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = read_gguf(tmp_path / "m.gguf")
    assert f.metadata["general.architecture"] == "llama"
    for key, (_, value) in values.items():
        got = f.metadata[key]
        got = got.tolist() if isinstance(got, np.ndarray) else got
        assert got == pytest.approx(value) and type(got) is type(value), key
    assert f.tensors["t.weight"].shape == (3, 64)
    np.testing.assert_array_equal(read_tensor(f, "t.weight"), x)
    assert not read_tensor(f, "t.weight").flags.writeable  # a view of the file
    q8 = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(read_tensor(f, "q.weight"), gguf.quants.dequantize(
        q8, gguf.GGMLQuantizationType.Q8_0))


def small_file(tmp_path) -> bytes:
    """A valid GGUF file of a few metadata pairs and two tensors, as bytes."""
    gguf = require("gguf")
    w = gguf.GGUFWriter(str(tmp_path / "small.gguf"), "llama")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0])
    w.add_tensor("a.weight", np.ones((2, 32), np.float32))
    w.add_tensor("b.weight", gguf.quants.quantize(np.ones((1, 256), np.float32),
                                                  gguf.GGMLQuantizationType.Q4_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return (tmp_path / "small.gguf").read_bytes()


def refused(tmp_path, data: bytes, name: str = "bad.gguf") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(GGUFError) as info:
        read_gguf(path)
    assert str(path) in str(info.value)
    return str(info.value)


@pytest.mark.reference
def test_damaged_headers_are_named(tmp_path):
    good = small_file(tmp_path)
    assert "magic" in refused(tmp_path, b"GGUG" + good[4:])
    assert "version: 1 " in refused(tmp_path, good[:4] + struct.pack("<I", 1)
                                    + good[8:])
    assert "cannot fit" in refused(tmp_path, good[:8] + struct.pack("<Q", 2**40)
                                   + good[16:])
    assert "too short" in refused(tmp_path, good[:10])
    # a string length past the end of the file
    at = good.index(b"general.architecture") - 8
    assert "file ends" in refused(tmp_path, good[:at] + struct.pack("<Q", 2**50)
                                  + good[at + 8:])


@pytest.mark.reference
def test_bad_tensor_infos_are_named(tmp_path):
    good = small_file(tmp_path)
    at = good.index(b"b.weight") + len(b"b.weight")  # n_dims, dims, type, offset
    n_dims, = struct.unpack_from("<I", good, at)
    type_at = at + 4 + 8 * n_dims
    offset_at = type_at + 4

    def patch(where: int, fmt: str, value: int) -> bytes:
        return good[:where] + struct.pack(fmt, value) + good[where +
                                                           struct.calcsize(fmt):]
    assert "tensor type 99" in refused(tmp_path, patch(type_at, "<I", 99))
    assert "tensor type 10 is not" in refused(tmp_path, patch(type_at, "<I", 10))
    assert "run past" in refused(tmp_path, patch(offset_at, "<Q", 2**20))
    assert "not a multiple" in refused(tmp_path, patch(offset_at, "<Q", 8))
    assert "overlaps" in refused(tmp_path, patch(offset_at, "<Q", 0))
    assert "dimensions" in refused(tmp_path, patch(at, "<I", 9))


@pytest.mark.reference
def test_fuzzed_files_fail_only_with_gguf_error_and_fast(tmp_path):
    good = small_file(tmp_path)
    rng = np.random.default_rng(0)
    cases = [good[:n] for n in range(0, len(good), 7)]  # truncations
    for _ in range(300):  # flipped bytes in the header, infos and metadata
        data = bytearray(good)
        for at in rng.integers(0, min(len(good), 400), rng.integers(1, 4)):
            data[at] = rng.integers(0, 256)
        cases.append(bytes(data))
    for _ in range(100):  # absurd u64 counts and lengths at random places
        at = int(rng.integers(4, 300))
        cases.append(good[:at] + struct.pack("<Q", int(rng.integers(2**32, 2**63)))
                     + good[at + 8:])
    path = tmp_path / "fuzz.gguf"
    for data in cases:
        path.write_bytes(data)
        start = time.perf_counter()
        try:
            f = read_gguf(path)
            for name in f.tensors:
                read_tensor(f, name)
        except GGUFError:
            pass
        assert time.perf_counter() - start < 1.0


@pytest.mark.reference
def test_cli_generates_and_chats_from_a_gguf_file(tmp_path, capsys, monkeypatch):
    import io

    from minigpt.__main__ import main
    from tests.gguf_files import tiny_gpt2_gguf

    path = tiny_gpt2_gguf(tmp_path / "tiny.gguf")
    tok = minigpt.load_tokenizer(path)
    assert tok.encode("hi hi") == [257, 32, 257]  # the merge; " " is byte 32
    assert main(["generate", "hi", "--model", str(path), "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("hi")
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    assert main(["chat", "--model", str(path), "--max-new-tokens", "3",
                 "--seed", "0"]) == 0
    assert main(["generate", "x", "--model", str(tmp_path / "none.gguf")]) == 2
    assert "no such directory or .gguf file" in capsys.readouterr().err
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + bytes(40))
    assert main(["generate", "x", "--model", str(tmp_path / "bad.gguf")]) == 2
    assert "bad.gguf: version: 0" in capsys.readouterr().err


def k_blocks(name: str, rows: int, cols: int, rng) -> np.ndarray:
    """Random bytes of a K format whose float16 scales keep values near 0.05."""
    from minigpt.kquants import GGML_TYPES

    t = next(t for t in GGML_TYPES.values() if t.name == name)
    n = rows * cols // t.block
    raw = rng.integers(0, 256, (n, t.size), dtype=np.uint8)
    scales = {"Q4_K": [(0, 5e-5), (2, 5e-5)], "Q5_K": [(0, 2.5e-5), (2, 2.5e-5)],
              "Q6_K": [(208, 1.2e-5)]}[name]
    for at, size in scales:
        d = (rng.uniform(0.5, 1.0, n) * size).astype(np.float16)
        raw[:, at:at + 2] = d.view(np.uint8).reshape(n, 2)
    return raw.reshape(rows, -1)


@pytest.mark.reference
def test_a_q4_k_m_style_mix_equals_transformers(tmp_path):
    """Q4_K, Q5_K, Q6_K, Q5_0 and Q8_0 in one file, as Q4_K_M files mix them;
    the reference decodes every tensor with gguf-py."""
    gguf = require("gguf")
    torch = require("torch")
    from tests.gguf_files import from_meta, write_hparams

    ref = torch_model("llama", hidden_size=256, intermediate_size=512,
                      num_attention_heads=4, num_key_value_heads=2)
    c = ref.config
    rng = np.random.default_rng(3)
    kinds = {"q_proj": "Q4_K", "k_proj": "Q4_K", "v_proj": "Q6_K", "o_proj": "Q4_K",
             "gate_proj": "Q5_K", "up_proj": "Q4_K", "down_proj": "Q6_K"}
    w = gguf.GGUFWriter(str(tmp_path / "mix.gguf"), "llama")
    write_hparams(w, "llama", c)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    params = dict(ref.named_parameters())
    for name, p in params.items():
        x = p.detach().numpy()
        part = name.split(".")[-2]
        gguf_name = names.get_name(name, (".weight", ".bias"))
        if x.ndim == 1:
            w.add_tensor(gguf_name, x)
            continue
        if part in kinds:
            kind = gguf.GGMLQuantizationType[kinds[part]]
            raw = k_blocks(kinds[part], *x.shape, rng)
        else:  # the embedding and the head: Q5_0 and Q8_0, from float weights
            kind = gguf.GGMLQuantizationType["Q5_0" if "embed" in name else "Q8_0"]
            raw = gguf.quants.quantize(x, kind)
        back = gguf.quants.dequantize(raw, kind).reshape(x.shape)
        heads = {"q_proj": c.num_attention_heads, "k_proj": c.num_key_value_heads}
        with torch.no_grad():  # the file holds Meta's order for q and k
            p.copy_(torch.from_numpy(from_meta(back, heads[part]).copy()
                                     if part in heads else back))
        w.add_tensor(gguf_name, raw, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ids = np.random.default_rng(4).integers(0, 96, 48)
    want = logits_of(ref, ids)
    assert rel_error(load_gguf(tmp_path / "mix.gguf").forward(ids), want) < 2e-5
    # load_model keeps the blocks packed, and the Q8_0 head rounds the token too
    model = minigpt.load_model(tmp_path / "mix.gguf")
    assert rel_error(model.forward(ids), want) < BOUNDS["Q8_0"]


def test_q8_0_files_quantise_back_to_their_own_blocks(tmp_path):
    """`--quantize q8_0` on a Q8_0 file: chapter 29's QuantMatrix holds exactly
    the file's int8 values and scales (decoding then re-quantising loses nothing)."""
    from minigpt.quantize import QuantMatrix, quantize_model
    from tools.gguf_export import export_gguf

    path = export_gguf(minigpt.DEMO_LLAMA, tmp_path / "q8.gguf", "Q8_0")
    f = read_gguf(path)
    model = quantize_model(minigpt.load_model(path), "q8_0")
    v = model.params["layers"][0]["self_attn"]["v_proj"]
    assert isinstance(v, QuantMatrix)
    info = f.tensors["blk.0.attn_v.weight"]
    blocks = f.data[info.offset:info.offset + info.nbytes].reshape(-1, 34)
    np.testing.assert_array_equal(v.q.reshape(-1, 32), blocks[:, 2:].view(np.int8))
    np.testing.assert_array_equal(v.d.reshape(-1), blocks[:, :2].copy().view(
        np.float16).astype(np.float32).ravel())


def params_equal(a, b, where: str = "params") -> None:
    """Two parameter trees hold the same arrays and the same QuantMatrix data."""
    from minigpt.quantize import QuantMatrix

    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            params_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            params_equal(x, y, f"{where}.{i}")
    elif isinstance(a, QuantMatrix):
        assert isinstance(b, QuantMatrix) and a.transposed == b.transposed, where
        np.testing.assert_array_equal(a.q, b.q, err_msg=where)
        np.testing.assert_array_equal(a.d, b.d, err_msg=where)
    else:
        np.testing.assert_array_equal(a, b, err_msg=where)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_K", "F32"])
@pytest.mark.parametrize("folder", ["demo", "demo_llama"])
def test_q8_0_loading_equals_quantising_the_float_model(tmp_path, folder, kind):
    """load_gguf_q8_0 takes Q8_0 blocks as stored, quantises other matrices as
    chapter 29 does: the same params as quantize_model on the float32 model."""
    from minigpt.gguf_q8_0 import load_gguf_q8_0
    from minigpt.quantize import quantize_model
    from tools.gguf_export import export_gguf

    source = minigpt.DEMO_MODEL if folder == "demo" else minigpt.DEMO_LLAMA
    path = export_gguf(source, tmp_path / "m.gguf", kind)
    ours = load_gguf_q8_0(path)
    floats = load_gguf(path)  # every matrix decoded (load_model keeps 4-bit blocks)
    params_equal(ours.params, quantize_model(floats, "q8_0").params)
    ids = np.arange(1, 50)
    want = floats.forward(ids)
    assert rel_error(ours.forward(ids), want) < 2e-2


@pytest.mark.reference
def test_cli_quantize_reads_q8_0_blocks_as_stored(tmp_path, capsys, monkeypatch):
    import minigpt.gguf_q8_0 as q8
    from minigpt.__main__ import main
    from tests.gguf_files import tiny_gpt2_gguf

    calls = []
    monkeypatch.setattr(q8, "load_gguf_q8_0", lambda p, f=q8.load_gguf_q8_0:
                        calls.append(p) or f(p))
    path = tiny_gpt2_gguf(tmp_path / "tiny.gguf")
    assert main(["generate", "hi", "--model", str(path), "--quantize", "q8_0",
                 "--max-new-tokens", "3", "--seed", "0"]) == 0
    assert calls == [path] and capsys.readouterr().out.startswith("hi")
