"""A LLaMA-style model: RMSNorm, SwiGLU, grouped-query attention, rotary positions.

Implements the decoder of LLaMA (Touvron et al., 2023) and its descendants as
laid out by Hugging Face's `LlamaForCausalLM`, whose logits and greedy tokens the
tests reproduce: pre-norm blocks with RMSNorm, a SwiGLU feed-forward, attention
with fewer key/value heads than query heads (GQA), rotate-half RoPE from
`minigpt.rope` (with linear `rope_scaling`), and an output head that may be tied
to the embedding or not. `load_llama` reads a checkpoint folder (`config.json`
with `model_type: "llama"`, `"qwen2"` or `"qwen3"` + `model.safetensors`, or the
shards listed in `model.safetensors.index.json`) through `minigpt.weights`, like
GPT-2's; its tokenizer is `minigpt.tokenizer_json`. Three newer families are small
additions, switched on by the config: Qwen2's biases on q, k and v, Qwen3's
RMSNorm of each head's q and k (with an explicit head_dim), and Llama 3's RoPE
scaling, a divisor per frequency pair (`minigpt.rope.llama3_divisors`).

Every forward pass goes through a KV cache (`minigpt.kvcache.KVCache`, with
n_kv_head heads): a cached decode step writes one row, and `forward(ids)` is the
same code with a throwaway cache of exactly len(ids) rows, so the cached and
uncached paths cannot drift apart.

Leaves out on purpose: batches, biases other than Qwen2's, RoPE scaling other
than linear and Llama 3's (NTK, YaRN and the others are refused by name), and
sliding-window attention (refused when a config turns it on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minigpt.attention import attention, merge_heads, split_heads
from minigpt.kvcache import KVCache
from minigpt.model import check_ids
from minigpt.rope import llama3_divisors, rope_angles, rope_half
from minigpt.weights import (
    WeightsError,
    check_fields,
    check_layers,
    fill_params,
    read_eos_ids,
    read_json,
    read_safetensors,
)

__all__ = ["LlamaConfig", "LlamaModel", "grouped_attention", "llama_attention",
           "llama_block", "llama_forward", "llama_names", "llama_params",
           "load_llama", "read_checkpoint", "read_llama_config", "rms_norm",
           "rope_factor", "silu", "swiglu"]


# --8<-- [start:llama-config]
@dataclass(frozen=True)
class LlamaConfig:
    """The shape of a LLaMA-style model; names follow GPTConfig where they can."""

    vocab_size: int = 32000           # number of tokens the model knows
    n_ctx: int = 2048                 # longest input ("max_position_embeddings")
    n_embd: int = 4096                # width C of the residual stream
    n_layer: int = 32                 # number of transformer blocks
    n_head: int = 32                  # query heads per block
    n_kv_head: int = 32               # key/value heads; n_head % n_kv_head == 0
    head_dim: int = 128               # features per head, even (RoPE uses pairs)
    n_hidden: int = 11008             # SwiGLU width ("intermediate_size")
    rms_norm_eps: float = 1e-6        # added to the mean square in every RMSNorm
    rope_theta: float = 10000.0       # RoPE base: larger turns slower, reaches farther
    rope_factor: float = 1.0          # linear rope_scaling: positions divided by it
    tie_word_embeddings: bool = False  # True: the output head is embed_tokens
    eos_token_ids: tuple[int, ...] = ()  # generation stops at any of these
    rope_divisors: tuple[float, ...] = ()  # per pair (Llama 3): frequencies / these
    qkv_bias: bool = False             # Qwen2: biases on the q, k and v projections
    qk_norm: bool = False              # Qwen3: RMSNorm of each head's q and k
# --8<-- [end:llama-config]


# --8<-- [start:read-llama-config]
def read_llama_config(path: str | Path) -> LlamaConfig:
    """A LlamaConfig from a Hugging Face LLaMA config.json."""
    raw = read_json(path)
    check_fields(path, raw, ("vocab_size", "max_position_embeddings", "hidden_size",
                             "num_hidden_layers", "num_attention_heads",
                             "num_key_value_heads", "head_dim", "intermediate_size"),
                 ("rms_norm_eps", "rope_theta"), ("tie_word_embeddings",))
    check_llama_supported(path, raw)
    try:
        n_head = raw["num_attention_heads"]
        config = LlamaConfig(
            vocab_size=raw["vocab_size"], n_ctx=raw["max_position_embeddings"],
            n_embd=raw["hidden_size"], n_layer=raw["num_hidden_layers"],
            n_head=n_head, n_kv_head=raw.get("num_key_value_heads") or n_head,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // n_head,
            n_hidden=raw["intermediate_size"],
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6), rope_theta=rope_theta(raw),
            rope_factor=rope_factor(path, raw),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            eos_token_ids=read_eos_ids(path, raw), **family_fields(path, raw))
    except KeyError as exc:
        raise WeightsError(f"{path}: required field {exc} is missing") from None
    if config.n_head % config.n_kv_head:
        raise WeightsError(f"{path}: num_attention_heads {config.n_head} is not "
                           f"a multiple of num_key_value_heads {config.n_kv_head}")
    if config.head_dim % 2:
        raise WeightsError(f"{path}: head_dim {config.head_dim} is odd; RoPE "
                           f"rotates features in pairs")
    return config


def rope_theta(raw: dict) -> float:
    """RoPE's base: transformers 5 nests it in rope_parameters, older files do not."""
    nested = raw.get("rope_parameters") or {}
    return float(nested.get("rope_theta") or raw.get("rope_theta") or 10000.0)
# --8<-- [end:read-llama-config]


# --8<-- [start:check-llama-supported]
def check_llama_supported(path: str | Path, raw: dict) -> None:
    """Refuse LLaMA variants this engine would compute wrongly."""
    if raw.get("model_type", "llama") not in LLAMA_FAMILY:
        raise WeightsError(f"{path}: model_type is {raw['model_type']!r}; this "
                           f"loader reads {', '.join(LLAMA_FAMILY)}")
    wanted = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
              "pretraining_tp": 1, "use_sliding_window": False}
    for key, value in wanted.items():
        if raw.get(key, value) != value:
            raise WeightsError(f"{path}: {key} is {raw[key]!r}; minigpt supports "
                               f"only {value!r}")
    for key in ("rope_parameters", "rope_scaling"):  # null, or an object
        if not isinstance(raw.get(key) or {}, dict):
            raise WeightsError(f"{path}: {key} must be a JSON object or null, "
                               f"got {raw[key]!r}")


def rope_factor(path: str | Path, raw: dict) -> float:
    """Linear RoPE scaling's factor (1.0: none), from either spelling transformers
    reads: rope_parameters (transformers 5) or rope_scaling ("type" or "rope_type")."""
    for key in ("rope_parameters", "rope_scaling"):  # new name first, as transformers
        scaling = raw.get(key) or {}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind in ("default", "llama3"):  # Llama 3's: rope_divisors (chapter 35)
            continue
        if kind != "linear":
            raise WeightsError(f"{path}: {key} asks for rope_type {kind!r}; minigpt "
                               f"supports plain RoPE ('default') and 'linear'")
        factor = scaling.get("factor")
        if not isinstance(factor, (int, float)) or not factor >= 1:
            raise WeightsError(f"{path}: {key}: linear scaling needs a factor >= 1, "
                               f"got {factor!r}")
        return float(factor)
    return 1.0
# --8<-- [end:check-llama-supported]


# --8<-- [start:llama-family]
# config.json's model_type for the LLaMA-style models this file computes
LLAMA_FAMILY = ("llama", "qwen2", "qwen3")


def family_fields(path: str | Path, raw: dict) -> dict:
    """What Qwen2, Qwen3 and Llama 3's RoPE add to a LLaMA config."""
    scaling = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    divisors = ()
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        head_dim = raw.get("head_dim") or raw["hidden_size"] // \
            raw["num_attention_heads"]
        try:
            divisors = tuple(llama3_divisors(
                head_dim, rope_theta(raw), float(scaling["factor"]),
                float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"]),
                int(scaling["original_max_position_embeddings"])).tolist())
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"{path}: rope_scaling llama3: {exc}") from None
    kind = raw.get("model_type")
    return {"rope_divisors": divisors, "qkv_bias": kind == "qwen2",
            "qk_norm": kind == "qwen3"}
# --8<-- [end:llama-family]


# --8<-- [start:rms-norm]
def rms_norm(x: np.ndarray, g: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Divide each row by its root mean square, then scale. x: (..., C) -> (..., C)"""
    if g.shape != (x.shape[-1],):
        raise ValueError(f"rms_norm: g must have shape ({x.shape[-1]},), "
                         f"got {g.shape}")
    ms = (x * x).mean(axis=-1, keepdims=True)  # [..., C] -> [..., 1]; no mean removed
    return g * (x / np.sqrt(ms + eps))
# --8<-- [end:rms-norm]


# --8<-- [start:swiglu]
def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), with sigmoid written via tanh so exp never overflows. (...)"""
    return x * (0.5 + 0.5 * np.tanh(0.5 * x))  # sigmoid(x) = (1 + tanh(x/2)) / 2


def swiglu(x: np.ndarray, gate_proj: np.ndarray, up_proj: np.ndarray,
           down_proj: np.ndarray) -> np.ndarray:
    """LLaMA's feed-forward: a SiLU gate times a linear path. x: (T, C) -> (T, C)"""
    gate = silu(x @ gate_proj)  # [T, C] -> [T, H], H = n_hidden
    return (gate * (x @ up_proj)) @ down_proj  # [T, H] -> [T, C]
# --8<-- [end:swiglu]


# --8<-- [start:grouped-attention]
def grouped_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                      mask: np.ndarray | None) -> np.ndarray:
    """Query heads share key/value heads in groups. q: (H, T, d), k, v: (H_kv, S, d)"""
    H, T, d = q.shape
    H_kv = k.shape[0]
    if H % H_kv:
        raise ValueError(f"grouped_attention: {H} query heads do not split into "
                         f"groups over {H_kv} key/value heads")
    # heads g*H/H_kv ... (g+1)*H/H_kv - 1 read kv head g, as in Hugging Face's repeat_kv
    q = q.reshape(H_kv, H // H_kv, T, d)  # [H, T, d] -> [H_kv, group, T, d]
    # k[:, None] broadcasts one kv head over its group: no copy of the cache
    out = attention(q, k[:, None], v[:, None], mask)  # [H_kv, group, T, d]
    return out.reshape(H, T, d)
# --8<-- [end:grouped-attention]


# --8<-- [start:llama-attention]
def llama_attention(x: np.ndarray, q_proj: np.ndarray, k_proj: np.ndarray,
                    v_proj: np.ndarray, o_proj: np.ndarray, config: LlamaConfig,
                    rope: tuple, cache: KVCache, layer: int, **extra) -> np.ndarray:
    """GQA with RoPE for T new tokens after the cached ones. x: (T, C) -> (T, C)"""
    q, k, v = project_qkv(x, q_proj, k_proj, v_proj, config, **extra)
    q, k = rope_half(q, *rope), rope_half(k, *rope)  # turn by each token's position
    # keys are stored already rotated: a cached key never has to turn again
    keys, values = cache.store(layer, k, v)  # [n_kv_head, length + T, d]
    out = grouped_attention(q, keys, values, cache.mask(len(x)))  # [n_head, T, d]
    return merge_heads(out) @ o_proj  # [T, n_head * d] -> [T, C]
# --8<-- [end:llama-attention]


# --8<-- [start:project-qkv]
def project_qkv(x: np.ndarray, q_proj: np.ndarray, k_proj: np.ndarray,
                v_proj: np.ndarray, config: LlamaConfig, q_bias=None, k_bias=None,
                v_bias=None, q_norm=None, k_norm=None) -> tuple:
    """Queries, keys and values by head. x: (T, C) -> (H, T, d), 2 x (H_kv, T, d)"""
    q, k, v = x @ q_proj, x @ k_proj, x @ v_proj  # [T, C] -> [T, H * d], ...
    if config.qkv_bias:  # Qwen2
        q, k, v = q + q_bias, k + k_bias, v + v_bias
    q = split_heads(q, config.n_head)  # [T, H * d] -> [H, T, d]
    k, v = split_heads(k, config.n_kv_head), split_heads(v, config.n_kv_head)
    if config.qk_norm:  # Qwen3: every head's q and k to the same size, before RoPE
        q = rms_norm(q, **q_norm, eps=config.rms_norm_eps)
        k = rms_norm(k, **k_norm, eps=config.rms_norm_eps)
    return q, k, v
# --8<-- [end:project-qkv]


# --8<-- [start:llama-block]
def llama_block(x: np.ndarray, input_layernorm: dict, self_attn: dict,
                post_attention_layernorm: dict, mlp: dict, config: LlamaConfig,
                rope: tuple, cache: KVCache, layer: int) -> np.ndarray:
    """One pre-norm LLaMA block. x: (T, C) -> (T, C)"""
    eps = config.rms_norm_eps
    h = rms_norm(x, **input_layernorm, eps=eps)
    x = x + llama_attention(h, **self_attn, config=config, rope=rope,
                            cache=cache, layer=layer)
    return x + swiglu(rms_norm(x, **post_attention_layernorm, eps=eps), **mlp)
# --8<-- [end:llama-block]


# --8<-- [start:llama-forward]
def llama_forward(params: dict, config: LlamaConfig, ids: np.ndarray,
                  cache: KVCache, last_only: bool = False) -> np.ndarray:
    """Logits of new tokens that follow the cached ones. ids: (T,) -> (T, V)"""
    ids = check_ids(ids, config.n_ctx, config.vocab_size)
    cache.check_room(len(ids))
    start, end = cache.length, cache.length + len(ids)
    if end > config.n_ctx:  # positions the model was never trained on
        raise ValueError(f"positions {start} to {end} go past n_ctx={config.n_ctx}")

    # no position table: positions enter as rotation angles, offset by the cache
    rope = rope_angles(np.arange(start, end), config.head_dim, config.rope_theta,
                       np.asarray(config.rope_divisors or config.rope_factor))
    x = params["embed_tokens"][ids]  # [T] -> [T, C]

    # the residual stream through every block
    for layer, block in enumerate(params["layers"]):
        x = llama_block(x, **block, config=config, rope=rope, cache=cache,
                        layer=layer)
    cache.length = end  # every layer has written rows start..end-1

    # final norm, then the output head (tied or not)
    if last_only:  # only the last position predicts the next token
        x = x[-1:]  # [T, C] -> [1, C]
    x = rms_norm(x, **params["norm"], eps=config.rms_norm_eps)
    return x @ params["lm_head"]  # [T, C] @ [C, V] -> [T, V]
# --8<-- [end:llama-forward]


# --8<-- [start:llama-model]
@dataclass(frozen=True)
class LlamaModel:
    """A loaded LLaMA-style model, with the interface generate() expects."""

    config: LlamaConfig
    params: dict  # {"embed_tokens", "layers": [block dicts], "norm", "lm_head"}

    def forward(self, ids: np.ndarray) -> np.ndarray:
        """Logits for a whole sequence. ids: (T,) -> (T, vocab_size)"""
        cache = self.empty_cache(capacity=len(ids))  # used once; llama_forward checks
        return llama_forward(self.params, self.config, ids, cache)

    def empty_cache(self, capacity: int | None = None) -> KVCache:
        """A cache of n_kv_head heads: n_head / n_kv_head times smaller than MHA's."""
        c = self.config
        return KVCache.empty(c.n_layer, c.n_kv_head, capacity or c.n_ctx, c.head_dim)

    def forward_cached(self, ids: np.ndarray, cache: KVCache,
                       last_only: bool = False) -> np.ndarray:
        """Logits of new tokens after those in the cache. ids: (T,) -> (T, V)"""
        return llama_forward(self.params, self.config, ids, cache, last_only)
# --8<-- [end:llama-model]


# --8<-- [start:llama-name-table]
def llama_names(config: LlamaConfig) -> dict[str, tuple[tuple, tuple]]:
    """Hugging Face name -> (path in our params, shape on disk), for every tensor."""
    C, V, F = config.n_embd, config.vocab_size, config.n_hidden
    q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    table = {"embed_tokens.weight": (("embed_tokens",), (V, C)),
             "norm.weight": (("norm", "g"), (C,))}
    if not config.tie_word_embeddings:
        table["lm_head.weight"] = (("lm_head",), (V, C))
    block = {"input_layernorm": (C,), "post_attention_layernorm": (C,),
             "self_attn.q_proj": (q, C), "self_attn.k_proj": (kv, C),
             "self_attn.v_proj": (kv, C), "self_attn.o_proj": (C, q),
             "mlp.gate_proj": (F, C), "mlp.up_proj": (F, C), "mlp.down_proj": (C, F)}
    for i in range(config.n_layer):
        for name, shape in block.items():
            where = ("layers", i, *name.split("."))
            if name.endswith("layernorm"):
                where = (*where, "g")
            table[f"layers.{i}.{name}.weight"] = (where, shape)
    return table | family_names(config)
# --8<-- [end:llama-name-table]


# --8<-- [start:family-names]
def family_names(config: LlamaConfig) -> dict[str, tuple[tuple, tuple]]:
    """The tensors Qwen2 (q, k, v biases) and Qwen3 (q, k norms) add."""
    sizes = {"q": config.n_head * config.head_dim,
             "k": config.n_kv_head * config.head_dim}
    sizes["v"] = sizes["k"]
    table = {}
    for i in range(config.n_layer):
        at = ("layers", i, "self_attn")
        for p in "qkv" if config.qkv_bias else "":
            table[f"layers.{i}.self_attn.{p}_proj.bias"] = ((*at, f"{p}_bias"),
                                                            (sizes[p],))
        for p in "qk" if config.qk_norm else "":
            table[f"layers.{i}.self_attn.{p}_norm.weight"] = (
                (*at, f"{p}_norm", "g"), (config.head_dim,))
    return table
# --8<-- [end:family-names]


# --8<-- [start:llama-params]
def llama_params(tensors: dict[str, np.ndarray], config: LlamaConfig,
                 source: str = "checkpoint") -> dict:
    """Checkpoint tensors -> our nested params, every name and shape checked."""
    tensors = {name.removeprefix("model."): x for name, x in tensors.items()}
    check_layers(config.n_layer, tensors, source)
    if config.tie_word_embeddings:  # tied: the head is the embedding, whatever
        tensors.pop("lm_head.weight", None)  # the file holds
    params: dict = {"layers": [{} for _ in range(config.n_layer)]}
    fill_params(tensors, llama_names(config), params, source, "LLaMA")
    # nn.Linear stores [out, in]; we multiply x @ w with w as [in, out], so the
    # projections are transposed on load (a NumPy view: nothing is copied)
    for block in params["layers"]:
        for part in (block["self_attn"], block["mlp"]):  # not biases, not norms
            part.update({k: w.T for k, w in part.items() if k.endswith("proj")})
    params["lm_head"] = (params["embed_tokens"] if config.tie_word_embeddings
                         else params["lm_head"]).T  # [V, C] -> [C, V]
    return params
# --8<-- [end:llama-params]


# --8<-- [start:read-checkpoint]
def read_checkpoint(folder: Path) -> tuple[dict[str, np.ndarray], str]:
    """Every tensor of a folder: model.safetensors, or the shards of its index."""
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file() or not index.is_file():
        path = folder / "model.safetensors"
        return read_safetensors(path), str(path)
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise WeightsError(f"{index}: no weight_map (tensor name -> shard file)")
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):  # each shard file once
        if Path(shard).name != shard:
            raise WeightsError(f"{index}: shard {shard!r} is not a file name")
        found = read_safetensors(folder / shard)  # memory-mapped, as one file is
        wrong = [n for n in found if weight_map.get(n) != shard]
        if wrong:
            raise WeightsError(f"{folder / shard}: tensor {wrong[0]!r} is not "
                               f"listed for this shard in {index.name}")
        tensors.update(found)
    absent = [name for name in weight_map if name not in tensors]
    if absent:
        raise WeightsError(f"{index}: tensor {absent[0]!r} is not in its shard "
                           f"{weight_map[absent[0]]!r}")
    return tensors, str(index)
# --8<-- [end:read-checkpoint]


# --8<-- [start:load-llama]
def load_llama(path: str | Path) -> LlamaModel:
    """A LLaMA-style model from a folder: config.json and safetensors weights."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder}: no config.json (a checkpoint folder has "
                           f"config.json and model.safetensors)")
    if not any((folder / name).is_file() for name in
               ("model.safetensors", "model.safetensors.index.json")):
        raise WeightsError(f"{folder}: no model.safetensors (or its shards' "
                           f"model.safetensors.index.json)")
    config = read_llama_config(folder / "config.json")
    tensors, source = read_checkpoint(folder)
    return LlamaModel(config, llama_params(tensors, config, source))
# --8<-- [end:load-llama]
