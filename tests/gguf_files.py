"""GGUF files written by llama.cpp's gguf-py from transformers models, for the tests.

Mimics llama.cpp's converter (convert_hf_to_gguf.py): tensor names from gguf-py's
TensorNameMap, LLaMA's q and k rows permuted to Meta's interleaved RoPE order,
GPT-2's Conv1D matrices transposed to [out, in], norms and biases kept in F32,
matrices in the chosen type, Llama 3's RoPE scaling as a `rope_freqs` tensor, and
no output.weight when the head is tied. Every matrix of the torch model is then
replaced by what the file holds (quantised and decoded by gguf-py), so the model
is the exact reference for the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.reference import require

CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


def to_meta(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotate-half rows -> Meta's interleaved pairs, per head."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def from_meta(w: np.ndarray, n_head: int) -> np.ndarray:
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_hparams(writer, arch: str, config) -> None:
    c = config
    put = {"context_length": c.max_position_embeddings if arch != "gpt2" else
           c.n_positions, "block_count": c.num_hidden_layers,
           "embedding_length": c.hidden_size,
           "feed_forward_length": getattr(c, "intermediate_size", None) or
           4 * c.hidden_size, "attention.head_count": c.num_attention_heads}
    for key, value in put.items():
        writer.add_uint32(f"{arch}.{key}", value)
    if arch == "gpt2":
        writer.add_float32("gpt2.attention.layer_norm_epsilon", c.layer_norm_epsilon)
        return
    writer.add_uint32(f"{arch}.attention.head_count_kv", c.num_key_value_heads)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    writer.add_float32(f"{arch}.rope.freq_base", c.rope_parameters["rope_theta"])
    if getattr(c, "head_dim", None):
        writer.add_uint32(f"{arch}.attention.key_length", c.head_dim)
        writer.add_uint32(f"{arch}.attention.value_length", c.head_dim)


def write_gguf(path: Path, model, arch: str, qtype: str = "F32",
               tokenizer=None) -> Path:
    """Write model (a transformers model, changed in place) as a GGUF file."""
    gguf = require("gguf")
    torch = require("torch")
    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    write_hparams(writer, arch, config)
    if tokenizer:
        tokenizer(writer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()],
                                     config.num_hidden_layers)
    kind = gguf.GGMLQuantizationType[qtype]
    tied = config.tie_word_embeddings or arch == "gpt2"
    params = dict(model.named_parameters())
    for name, p in model.state_dict().items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) or \
                (tied and name == "lm_head.weight"):
            continue
        w = p.detach().numpy().astype(np.float32)
        there, back = forward_and_back(name, arch, config)
        data = there(w)
        if data.ndim == 2:  # matrices in the chosen type; vectors stay F32
            stored, rounded, raw_dtype = data, data, None
            if qtype == "F16":
                stored = data.astype(np.float16)
                rounded = stored.astype(np.float32)
            elif qtype != "F32":
                stored, raw_dtype = gguf.quants.quantize(data, kind), kind
                rounded = gguf.quants.dequantize(stored, kind).reshape(data.shape)
            with torch.no_grad():
                params[name].copy_(torch.from_numpy(back(rounded).copy()))
            writer.add_tensor(names.get_name(name, (".weight", ".bias")), stored,
                              raw_dtype=raw_dtype)
        else:
            writer.add_tensor(names.get_name(name, (".weight", ".bias")), data)
    if tied and arch != "gpt2" and "lm_head.weight" in params:
        with torch.no_grad():  # the head shares the (rounded) embedding
            params["lm_head.weight"].copy_(params["model.embed_tokens.weight"])
    add_rope_freqs(writer, config, arch)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def forward_and_back(name: str, arch: str, config):
    """The converter's change to one tensor, and its inverse."""
    if arch == "gpt2" and name.endswith(CONV1D):
        return (lambda w: w.T.copy()), (lambda w: w.T)
    if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
        heads = config.num_attention_heads if "q_proj" in name else \
            config.num_key_value_heads
        return (lambda w: to_meta(w, heads)), (lambda w: from_meta(w, heads))
    return (lambda w: w), (lambda w: w)


def add_rope_freqs(writer, config, arch: str) -> None:
    """Llama 3's scaling as llama.cpp stores it: each pair's frequency divisor."""
    rope = getattr(config, "rope_parameters", None) or {}
    if arch != "llama" or rope.get("rope_type") != "llama3":
        return
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    d = config.hidden_size // config.num_attention_heads
    plain = rope["rope_theta"] ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    writer.add_tensor("rope_freqs.weight", (plain / scaled.double().numpy())
                      .astype(np.float32))


def tiny_gpt2_gguf(path: Path, seed: int = 0, block_count: int = 1) -> Path:
    """A GPT-2 GGUF of random weights with a byte-level vocabulary (one merge)
    and a chat template: small enough to serve, download and run in a test."""
    gguf = require("gguf")
    from minigpt.tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    V, C, T = 258, 32, 64
    w = gguf.GGUFWriter(str(path), "gpt2")
    for key, value in (("context_length", T), ("embedding_length", C),
                       ("block_count", block_count), ("feed_forward_length", 4 * C),
                       ("attention.head_count", 2)):
        w.add_uint32(f"gpt2.{key}", value)
    w.add_float32("gpt2.attention.layer_norm_epsilon", 1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([*bytes_to_unicode().values(), "<|endoftext|>", "hi"])
    w.add_token_types([1] * 256 + [3, 1])
    w.add_token_merges(["h i"])
    w.add_uint32("tokenizer.ggml.eos_token_id", 256)
    w.add_string("tokenizer.chat_template",
                 "{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    shapes = {"token_embd.weight": (V, C), "position_embd.weight": (T, C),
              "output_norm.weight": (C,), "output_norm.bias": (C,),
              "blk.0.attn_norm.weight": (C,), "blk.0.attn_norm.bias": (C,),
              "blk.0.attn_qkv.weight": (3 * C, C), "blk.0.attn_qkv.bias": (3 * C,),
              "blk.0.attn_output.weight": (C, C), "blk.0.attn_output.bias": (C,),
              "blk.0.ffn_norm.weight": (C,), "blk.0.ffn_norm.bias": (C,),
              "blk.0.ffn_up.weight": (4 * C, C), "blk.0.ffn_up.bias": (4 * C,),
              "blk.0.ffn_down.weight": (C, 4 * C), "blk.0.ffn_down.bias": (C,)}
    for name, shape in shapes.items():
        w.add_tensor(name, rng.normal(0, 0.2, shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
