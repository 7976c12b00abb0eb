"""Models from GGUF files: the metadata becomes a config, the tensors our params.

A GGUF file names its architecture (`general.architecture`) and keeps the
sizes under that name (`llama.block_count`, `qwen2.embedding_length`, ...). Its
tensor names are llama.cpp's (`blk.0.attn_q.weight`), which `hf_names` maps to
the Hugging Face names that the safetensors loaders already check, so a GGUF
model is read by the same name tables, shapes and forward code as a checkpoint
folder. Two facts of llama.cpp's converter are undone on the way: LLaMA's q and
k rows are stored in Meta's interleaved RoPE order (the converter undoes Hugging
Face's permutation), and GPT-2's matrices are stored [out, in] where Hugging
Face's Conv1D keeps [in, out]. Follows llama.cpp's tensor names as gguf-py's
`TensorNameMap` lists them; the tests write files with gguf-py and compare the
logits with transformers.

Leaves out on purpose: architectures other than llama, qwen2, qwen3 and gpt2;
keeping quantised tensors quantised (every tensor becomes float32 at load);
per-layer head counts, and RoPE scaling other than linear and Llama 3's.
"""

from __future__ import annotations

from pathlib import Path

from minigpt.gguf import GGUFError, GGUFFile, read_gguf, read_tensor
from minigpt.kvcache import CachedGPT
from minigpt.llama import LLAMA_FAMILY, LlamaConfig, LlamaModel, llama_params
from minigpt.rope import interleaved_to_half
from minigpt.weights import GPTConfig, gpt2_params

__all__ = ["gguf_gpt2", "gguf_llama", "gpt2_config", "hf_names", "llama_config",
           "load_gguf", "meta"]


# --8<-- [start:gguf-meta]
MISSING = object()


def meta(gguf: GGUFFile, key: str, kind: type = int, default: object = MISSING):
    """A metadata value of the expected kind (float accepts an int), or a
    GGUFError naming the key."""
    value = gguf.metadata.get(key, default)
    if value is MISSING:
        raise GGUFError(f"{gguf.path}: {key}: missing")
    ok = (int, float) if kind is float else kind
    if value is not default and (not isinstance(value, ok) or
                                 (kind is not bool and isinstance(value, bool))):
        raise GGUFError(f"{gguf.path}: {key}: {value!r} is not a {kind.__name__}")
    return value


def eos_ids(gguf: GGUFFile) -> tuple[int, ...]:
    """The ids that end a text: end of sequence, and end of turn if named."""
    keys = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
    return tuple(dict.fromkeys(meta(gguf, k, int) for k in keys
                               if k in gguf.metadata))
# --8<-- [end:gguf-meta]


# --8<-- [start:gguf-names]
# llama.cpp's names -> Hugging Face's, outside the blocks and inside blk.N
LLAMA_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm",
               "output": "lm_head"}
LLAMA_BLOCK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
               "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
               "attn_k_norm": "self_attn.k_norm",
               "ffn_norm": "post_attention_layernorm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj"}
GPT2_NAMES = {"token_embd": "wte", "position_embd": "wpe", "output_norm": "ln_f",
              "output": "lm_head"}
GPT2_BLOCK = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn",
              "attn_output": "attn.c_proj", "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc",
              "ffn_down": "mlp.c_proj"}


def hf_names(gguf: GGUFFile, top: dict, block: dict, layers: str) -> dict:
    """Hugging Face name -> GGUF name, for every tensor of the file."""
    names = {}
    for name in gguf.tensors:
        stem, _, suffix = name.rpartition(".")  # "blk.3.attn_q", "weight"
        parts = stem.split(".", 2)
        if len(parts) == 3 and parts[0] == "blk" and parts[2] in block:
            names[f"{layers}.{parts[1]}.{block[parts[2]]}.{suffix}"] = name
        elif stem in top:
            names[f"{top[stem]}.{suffix}"] = name
        elif name != "rope_freqs.weight":  # read by gguf_llama itself
            raise GGUFError(f"{gguf.path}: tensor {name!r}: not a known tensor of "
                            f"this architecture")
    return names
# --8<-- [end:gguf-names]


# --8<-- [start:gguf-llama]
def gguf_llama(gguf: GGUFFile, arch: str) -> LlamaModel:
    """A LLaMA, Qwen2 or Qwen3 from its GGUF metadata and tensors."""
    config = llama_config(gguf, arch)
    tensors = {hf: read_tensor(gguf, name) for hf, name in
               hf_names(gguf, LLAMA_NAMES, LLAMA_BLOCK, "layers").items()}
    if arch == "llama":  # Meta's pairs (0, 1), (2, 3)... back to rotate-half's
        for name in tensors:  # those it holds: llama_params names a missing one
            for p, heads in (("q", config.n_head), ("k", config.n_kv_head)):
                if name.endswith(f".self_attn.{p}_proj.weight"):
                    tensors[name] = interleaved_to_half(tensors[name], heads)
    return LlamaModel(config, llama_params(tensors, config, str(gguf.path)))


def llama_config(gguf: GGUFFile, arch: str) -> LlamaConfig:
    """The config of a llama, qwen2 or qwen3 file, from its metadata."""
    def get(key: str, kind: type = int, default: object = MISSING):
        return meta(gguf, f"{arch}.{key}", kind, default)

    C, n_head = get("embedding_length"), get("attention.head_count")
    n_kv = get("attention.head_count_kv", int, n_head)
    divisors = (tuple(read_tensor(gguf, "rope_freqs.weight").tolist())  # Llama 3
                if "rope_freqs.weight" in gguf.tensors else ())
    linear = get("rope.scaling.type", str, "none") == "linear"
    return LlamaConfig(
        vocab_size=gguf.tensors["token_embd.weight"].shape[0],
        n_ctx=get("context_length"), n_embd=C, n_layer=get("block_count"),
        n_head=n_head, n_kv_head=n_kv, n_hidden=get("feed_forward_length"),
        head_dim=get("attention.key_length", int, C // n_head),
        rms_norm_eps=get("attention.layer_norm_rms_epsilon", float),
        rope_theta=get("rope.freq_base", float, 10000.0),
        rope_factor=get("rope.scaling.factor", float, 1.0) if linear else 1.0,
        rope_divisors=divisors, tie_word_embeddings="output.weight" not in
        gguf.tensors, eos_token_ids=eos_ids(gguf), qkv_bias=arch == "qwen2",
        qk_norm=arch == "qwen3")
# --8<-- [end:gguf-llama]


# --8<-- [start:gguf-gpt2]
def gguf_gpt2(gguf: GGUFFile) -> CachedGPT:
    """A GPT-2 from its GGUF file: the same name table as its safetensors."""
    config, tensors = gpt2_config(gguf), {}
    for hf, name in hf_names(gguf, GPT2_NAMES, GPT2_BLOCK, "h").items():
        x = read_tensor(gguf, name)
        # llama.cpp stores matrices [out, in]; Hugging Face's Conv1D [in, out]
        tensors[hf] = x.T if x.ndim == 2 and hf.startswith("h.") else x
    return CachedGPT(config, gpt2_params(tensors, config, str(gguf.path)))


def gpt2_config(gguf: GGUFFile) -> GPTConfig:
    """The config of a gpt2 file, from its metadata."""
    return GPTConfig(
        vocab_size=gguf.tensors["token_embd.weight"].shape[0],
        n_ctx=meta(gguf, "gpt2.context_length"),
        n_embd=meta(gguf, "gpt2.embedding_length"),
        n_layer=meta(gguf, "gpt2.block_count"),
        n_head=meta(gguf, "gpt2.attention.head_count"),
        layer_norm_epsilon=meta(gguf, "gpt2.attention.layer_norm_epsilon", float),
        eos_token_ids=eos_ids(gguf))
# --8<-- [end:gguf-gpt2]


# --8<-- [start:load-gguf]
def load_gguf(path: str | Path) -> LlamaModel | CachedGPT:
    """A model from a .gguf file, whatever architecture it names."""
    gguf = read_gguf(path)
    arch = meta(gguf, "general.architecture", str)
    if "token_embd.weight" not in gguf.tensors:
        raise GGUFError(f"{path}: tensor 'token_embd.weight': missing")
    if arch == "gpt2":
        return gguf_gpt2(gguf)
    if arch in LLAMA_FAMILY:
        return gguf_llama(gguf, arch)
    raise GGUFError(f"{path}: general.architecture: {arch!r} is not supported "
                    f"(known: gpt2, {', '.join(LLAMA_FAMILY)})")
# --8<-- [end:load-gguf]
