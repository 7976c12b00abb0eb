"""Train the demo models shipped in `minigpt/demo*/`: small GPT-2 and LLaMA models.

Optional: it needs PyTorch and safetensors (`pip install -e ".[ref]"`); nothing in the
book or the tests runs it. It trains the project's own byte-level BPE tokenizer
(`minigpt.tokenizer.train_bpe`) on the training split, then a GPT-2-architecture
model written here in PyTorch (pre-norm blocks, GELU tanh, tied output head), and
exports it in Hugging Face's GPT-2 layout (Conv1D weights stored [in, out], fp16
safetensors), so that `minigpt.load_model` reads it like any other checkpoint.

With `--arch llama` it trains the LLaMA demo of `minigpt/demo_llama/` instead: a
SentencePiece-style BPE tokenizer (`▁` for spaces, byte fallback to `<0xNN>`,
trained with the `tokenizers` library and saved as `tokenizer.json`), and a
LLaMA-architecture model (RMSNorm, SwiGLU, rotate-half RoPE, grouped-query
attention, tied output head), exported in Hugging Face's `LlamaForCausalLM` layout.

Leaves out on purpose: GPUs, mixed precision, gradient accumulation and resuming.

    python tools/train_demo.py --out minigpt/demo          # the shipped GPT-2 run
    python tools/train_demo.py --arch llama                # the shipped LLaMA run
    python tools/train_demo.py --check                     # export round-trip only
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minigpt.models import load_model  # noqa: E402
from minigpt.tokenizer import ByteBPE, load_tokenizer, train_bpe  # noqa: E402


class Block(nn.Module):
    """One pre-norm transformer block, GPT-2's layout."""

    def __init__(self, c: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(c, eps=1e-5), nn.LayerNorm(c, eps=1e-5)
        self.c_attn, self.attn_proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.c_fc, self.mlp_proj = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.drop = nn.Dropout(dropout)
        self.p = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)  # [B, T, C] each
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in (q, k, v))                       # [B, H, T, D]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.p if self.training else 0)
        a = a.transpose(1, 2).reshape(B, T, C)
        x = x + self.drop(self.attn_proj(a))
        h = F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")
        return x + self.drop(self.mlp_proj(h))


class TinyGPT(nn.Module):
    """GPT-2: token + position embeddings, blocks, final norm, tied logits."""

    def __init__(self, vocab: int, n_ctx: int, c: int, n_layer: int, n_head: int,
                 dropout: float = 0.0):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, c), nn.Embedding(n_ctx, c)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(c, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(c, eps=1e-5)
        for name, p in self.named_parameters():  # GPT-2's initialisation
            if name.endswith("weight") and p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if "proj" in name else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        x = self.drop(self.wte(ids) + self.wpe(torch.arange(T)))
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T  # [B, T, C] -> [B, T, V]


class RMSNorm(nn.Module):
    """LLaMA's norm: divide by the root mean square, scale; no mean, no bias."""

    def __init__(self, c: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(c)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE with pairs (i, i + d/2), Hugging Face's layout. x: [B, H, T, d]"""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class LlamaBlock(nn.Module):
    """One pre-norm LLaMA block: GQA with RoPE, then a SwiGLU feed-forward."""

    def __init__(self, c: int, n_head: int, n_kv_head: int, hidden: int,
                 eps: float, dropout: float):
        super().__init__()
        self.n_head, self.n_kv_head, self.d = n_head, n_kv_head, c // n_head
        self.input_layernorm = RMSNorm(c, eps)
        self.post_attention_layernorm = RMSNorm(c, eps)
        self.q_proj = nn.Linear(c, c, bias=False)
        self.k_proj = nn.Linear(c, n_kv_head * self.d, bias=False)
        self.v_proj = nn.Linear(c, n_kv_head * self.d, bias=False)
        self.o_proj = nn.Linear(c, c, bias=False)
        self.gate_proj = nn.Linear(c, hidden, bias=False)
        self.up_proj = nn.Linear(c, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, c, bias=False)
        self.drop, self.p = nn.Dropout(dropout), dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> torch.Tensor:
        B, T, C = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.n_head, self.d).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.n_kv_head, self.d).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.n_kv_head, self.d).transpose(1, 2)
        q, k = rotate_half(q, cos, sin), rotate_half(k, cos, sin)
        group = self.n_head // self.n_kv_head  # query heads per key/value head
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.p if self.training else 0)
        x = x + self.drop(self.o_proj(a.transpose(1, 2).reshape(B, T, C)))
        h = self.post_attention_layernorm(x)
        gated = F.silu(self.gate_proj(h)) * self.up_proj(h)  # SwiGLU
        return x + self.drop(self.down_proj(gated))


class SmallLlama(nn.Module):
    """LLaMA: token embeddings, blocks with RoPE, final RMSNorm, tied logits."""

    def __init__(self, vocab: int, n_ctx: int, c: int, n_layer: int, n_head: int,
                 n_kv_head: int, hidden: int, eps: float = 1e-5,
                 theta: float = 10000.0, dropout: float = 0.0):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, c)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(LlamaBlock(c, n_head, n_kv_head, hidden, eps,
                                               dropout) for _ in range(n_layer))
        self.norm = RMSNorm(c, eps)
        d = c // n_head
        freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        angles = torch.outer(torch.arange(n_ctx, dtype=torch.float64), freqs)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)
        for name, p in self.named_parameters():  # GPT-2's initialisation
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if "o_proj" in name or \
                    "down_proj" in name else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        x = self.drop(self.embed_tokens(ids))
        for block in self.layers:
            x = block(x, self.cos[:T], self.sin[:T])
        return self.norm(x) @ self.embed_tokens.weight.T  # [B, T, C] -> [B, T, V]


# --8<-- [start:export-llama-names]
def llama_tensors(model: SmallLlama) -> dict[str, torch.Tensor]:
    """Our parameters under LlamaForCausalLM names; nn.Linear is [out, in] in both."""
    out = {"model.embed_tokens.weight": model.embed_tokens.weight,
           "model.norm.weight": model.norm.weight}
    where = {"input_layernorm": "", "post_attention_layernorm": "",
             "q_proj": "self_attn.", "k_proj": "self_attn.", "v_proj": "self_attn.",
             "o_proj": "self_attn.", "gate_proj": "mlp.", "up_proj": "mlp.",
             "down_proj": "mlp."}
    for i, block in enumerate(model.layers):
        for ours, prefix in where.items():
            out[f"model.layers.{i}.{prefix}{ours}.weight"] = getattr(block, ours).weight
    return out  # no lm_head.weight: the head is tied to the embedding
# --8<-- [end:export-llama-names]


SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2, as in Llama 2's tokenizer


def train_sentencepiece_bpe(text: str, vocab_size: int) -> Tokenizer:
    """A Llama-2-style BPE tokenizer: ▁ for spaces, byte fallback, BOS prepended."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    # training only: words split before each ▁, so no merge crosses a word boundary;
    # lines are trained apart, so "\n" is not in the alphabet: it falls back to <0x0A>
    tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, show_progress=False,
                                  special_tokens=SPECIALS)
    tok.train_from_iterator(text.splitlines(), trainer)
    spec = json.loads(tok.to_str())
    learned = [t for t in spec["model"]["vocab"] if t not in SPECIALS]
    pieces = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + learned
    spec["model"]["vocab"] = {piece: i for i, piece in enumerate(pieces)}
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["pre_tokenizer"] = None
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "),
                                     decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


def save_weights(tensors: dict[str, torch.Tensor], folder: Path,
                 dtype: torch.dtype) -> None:
    """Write model.safetensors into folder, every tensor cast to dtype."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to(dtype).contiguous() for name, t in tensors.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def export_llama(model: SmallLlama, tok: Tokenizer, args: argparse.Namespace,
                 folder: Path, dtype: torch.dtype = torch.float16) -> None:
    """Hugging Face LLaMA files: config, safetensors, tokenizer.json and configs."""
    save_weights(llama_tensors(model), folder, dtype)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
              "vocab_size": tok.get_vocab_size(), "hidden_size": args.n_embd,
              "intermediate_size": args.n_hidden, "num_hidden_layers": args.n_layer,
              "num_attention_heads": args.n_head, "num_key_value_heads": args.n_kv_head,
              "head_dim": args.n_embd // args.n_head,
              "max_position_embeddings": args.n_ctx, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "rope_scaling": None, "hidden_act": "silu",
              "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
              "pretraining_tp": 1, "tie_word_embeddings": True,
              "initializer_range": 0.02, "use_cache": True,
              "bos_token_id": 1, "eos_token_id": 2,
              "torch_dtype": "float16" if dtype == torch.float16 else "float32"}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": 1, "eos_token_id": 2, "max_length": args.n_ctx}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2)
                                                   + "\n")
    tok.save(str(folder / "tokenizer.json"))
    tok_config = {"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True,
                  "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                  "unk_token": "<unk>", "pad_token": None, "legacy": False,
                  "model_max_length": args.n_ctx, "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2)
                                                  + "\n")


def llama_model(args: argparse.Namespace, vocab: int, dropout: float = 0.0
                ) -> SmallLlama:
    return SmallLlama(vocab, args.n_ctx, args.n_embd, args.n_layer, args.n_head,
                      args.n_kv_head, args.n_hidden, dropout=dropout)


def check_export_llama(args: argparse.Namespace) -> float:
    """Export a small random LLaMA and compare minigpt's logits with torch's."""
    from minigpt.llama import load_llama

    text = "To be, or not to be, that is the question.\n" * 20
    tok = train_sentencepiece_bpe(text, 300)
    model = llama_model(args, tok.get_vocab_size()).eval()
    ids = torch.tensor([tok.encode(text[:200]).ids[: args.n_ctx]])
    with torch.no_grad():
        want = model(ids)[0].numpy()
    with tempfile.TemporaryDirectory() as tmp:
        export_llama(model, tok, args, Path(tmp), dtype=torch.float32)
        got = load_llama(tmp).forward(ids[0].numpy())
    err = float(np.abs(got - want).max())
    print(f"export check (llama): max |logits difference| = {err:.2e}")
    if err > 1e-4:
        raise SystemExit("export check failed: minigpt disagrees with torch")
    return err


# --8<-- [start:export-gpt2-names]
def hf_tensors(model: TinyGPT) -> dict[str, torch.Tensor]:
    """Our parameters under Hugging Face GPT-2 names; Linear [out, in] -> [in, out]."""
    out = {"wte.weight": model.wte.weight, "wpe.weight": model.wpe.weight,
           "ln_f.weight": model.ln_f.weight, "ln_f.bias": model.ln_f.bias}
    names = {"ln_1": "ln_1", "ln_2": "ln_2", "c_attn": "attn.c_attn",
             "attn_proj": "attn.c_proj", "c_fc": "mlp.c_fc", "mlp_proj": "mlp.c_proj"}
    for i, block in enumerate(model.h):
        for ours, theirs in names.items():
            layer = getattr(block, ours)
            w = layer.weight if ours.startswith("ln") else layer.weight.T
            out[f"h.{i}.{theirs}.weight"] = w
            out[f"h.{i}.{theirs}.bias"] = layer.bias
    return out
# --8<-- [end:export-gpt2-names]


def export(model: TinyGPT, tok: ByteBPE, args: argparse.Namespace,
           folder: Path, dtype: torch.dtype = torch.float16) -> None:
    """config.json + model.safetensors + vocab.json/merges.txt into folder."""
    save_weights(hf_tensors(model), folder, dtype)
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
              "vocab_size": len(tok.vocab), "n_positions": args.n_ctx,
              "n_ctx": args.n_ctx, "n_embd": args.n_embd, "n_layer": args.n_layer,
              "n_head": args.n_head, "n_inner": None,
              "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
              "tie_word_embeddings": True, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
              "attn_pdrop": 0.0, "initializer_range": 0.02,
              "bos_token_id": 0, "eos_token_id": 0,
              "torch_dtype": "float16" if dtype == torch.float16 else "float32"}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tok.save(folder)


def check_export(args: argparse.Namespace) -> float:
    """Export a small random model and compare minigpt's logits with torch's."""
    text = "To be, or not to be, that is the question. " * 20
    tok = ByteBPE(*train_bpe(text, 300))
    model = TinyGPT(len(tok.vocab), args.n_ctx, args.n_embd, args.n_layer,
                    args.n_head).eval()
    ids = torch.tensor([tok.encode(text[:200])])
    with torch.no_grad():
        want = model(ids)[0].numpy()
    with tempfile.TemporaryDirectory() as tmp:
        export(model, tok, args, Path(tmp), dtype=torch.float32)
        got = load_model(tmp).forward(ids[0].numpy())
        assert load_tokenizer(tmp).encode(text[:200]) == ids[0].tolist()
    err = float(np.abs(got - want).max())
    print(f"export check: max |logits difference| = {err:.2e}")
    if err > 1e-4:
        raise SystemExit("export check failed: minigpt disagrees with torch")
    return err


# --8<-- [start:training-batches]
def batches(data: torch.Tensor, n_ctx: int, batch: int, gen: torch.Generator):
    """Random windows of n_ctx + 1 tokens: inputs and next-token targets."""
    starts = torch.randint(len(data) - n_ctx - 1, (batch,), generator=gen)
    x = torch.stack([data[s: s + n_ctx + 1] for s in starts.tolist()])
    return x[:, :-1], x[:, 1:]  # [B, T] each; y is x shifted left by one token
# --8<-- [end:training-batches]


# --8<-- [start:training-step]
def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, lr: float) -> float:
    """One update: the loss on a batch, its gradients, an AdamW step."""
    for group in opt.param_groups:
        group["lr"] = lr
    logits = model(x)  # [B, T] -> [B, T, V]
    # the mean of -log p(true next token) over all B * T positions
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()  # backpropagation: d loss / d every parameter
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # tame rare spikes
    opt.step()
    return loss.item()
# --8<-- [end:training-step]


@torch.no_grad()
def evaluate(model: TinyGPT, data: torch.Tensor, n_ctx: int) -> float:
    """Mean loss over every non-overlapping window of data (deterministic)."""
    model.eval()
    n = (len(data) - 1) // n_ctx
    x = data[: n * n_ctx].view(n, n_ctx)
    y = data[1: n * n_ctx + 1].view(n, n_ctx)
    losses = [F.cross_entropy(model(x[i:i + 64]).flatten(0, 1), y[i:i + 64].flatten())
              .item() * len(x[i:i + 64]) for i in range(0, n, 64)]
    model.train()
    return sum(losses) / n


# --8<-- [start:learning-rate-schedule]
def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up to peak, then cosine decay to a tenth of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)  # 0 -> 1 over the rest
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))
# --8<-- [end:learning-rate-schedule]


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    text = Path(args.data).read_text(encoding="utf-8")
    split = int(len(text) * (1 - args.val_fraction))
    train_text, val_text = text[:split], text[split:]  # the last 10% is held out
    t0 = time.time()
    if args.arch == "llama":
        tok = train_sentencepiece_bpe(train_text, args.vocab_size)
        vocab = tok.get_vocab_size()
        # the whole text at once: the prompt "▁" is added once, at the very start
        train_ids = torch.tensor(tok.encode(train_text, add_special_tokens=False).ids)
        val_ids = torch.tensor(tok.encode(val_text, add_special_tokens=False).ids)
        model = llama_model(args, vocab, args.dropout)
    else:
        tok = ByteBPE(*train_bpe(train_text, args.vocab_size))
        vocab = len(tok.vocab)
        train_ids = torch.tensor(tok.encode(train_text))
        val_ids = torch.tensor(tok.encode(val_text))
        model = TinyGPT(vocab, args.n_ctx, args.n_embd, args.n_layer,
                        args.n_head, args.dropout)
    print(f"tokenizer: {vocab} tokens in {time.time() - t0:.0f} s", flush=True)
    print(f"tokens: {len(train_ids)} train, {len(val_ids)} validation", flush=True)

    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}", flush=True)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    log = {"args": vars(args), "n_params": n_params, "train_tokens": len(train_ids),
           "val_tokens": len(val_ids), "steps": [], "train_loss": [], "val_loss": [],
           "eval_train_loss": [], "minutes": []}
    start = time.time()
    running = None
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            val = evaluate(model, val_ids, args.n_ctx)
            minutes = (time.time() - start) / 60
            log["steps"].append(step)
            log["val_loss"].append(round(val, 4))
            log["train_loss"].append(round(running, 4) if running else None)
            log["minutes"].append(round(minutes, 2))
            print(f"step {step:5d}  train {running or float('nan'):.3f}  "
                  f"val {val:.3f}  {minutes:5.1f} min", flush=True)
            Path(args.log).write_text(json.dumps(log, indent=1) + "\n")
        if step == args.steps:
            break
        x, y = batches(train_ids, args.n_ctx, args.batch, gen)
        if args.arch == "llama":
            # half the windows start with BOS, as a prompt does; the other half
            # start mid-text, as the window does once generation slides it
            bos = torch.rand(args.batch, generator=gen) < 0.5
            x[bos, 0] = SPECIALS.index("<s>")
        lr = learning_rate(step, args.steps, args.lr, args.warmup)
        value = train_step(model, opt, x, y, lr)
        running = value if running is None else 0.95 * running + 0.05 * value
    model.eval()
    # final losses without dropout; the train loss on a validation-sized sample
    sample = train_ids[: len(val_ids)]
    log["final_train_loss"] = round(evaluate(model, sample, args.n_ctx), 4)
    log["final_val_loss"] = round(evaluate(model, val_ids, args.n_ctx), 4)
    log["train_minutes"] = round((time.time() - start) / 60, 1)
    log["machine"] = {"cpu": platform.processor() or platform.machine(),
                      "torch": torch.__version__, "threads": args.threads}
    Path(args.log).write_text(json.dumps(log, indent=1) + "\n")
    if args.arch == "llama":
        export_llama(model, tok, args, Path(args.out))
        return print(f"final: train {log['final_train_loss']}, val "
                     f"{log['final_val_loss']}, {log['train_minutes']} min; "
                     f"wrote {args.out}", flush=True)
    export(model, tok, args, Path(args.out))
    plot(args.log)
    print(f"final: train {log['final_train_loss']}, val {log['final_val_loss']}, "
          f"{log['train_minutes']} min; wrote {args.out}", flush=True)


def plot(log_path: str | Path, svg: Path = ROOT / "docs/assets/charts/training-loss.svg"
         ) -> None:
    """Draw the train and validation loss curves of a training log as an SVG."""
    from benchmarks.common import pyplot  # the book's chart style, phone-readable

    plt = pyplot()
    log = json.loads(Path(log_path).read_text())
    steps, train, val = log["steps"], log["train_loss"], log["val_loss"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(steps[1:], train[1:], marker="o", ms=3, label="train (running mean)")
    ax.plot(steps, val, marker="o", ms=3, label="validation (last 10%)")
    ax.set_xlabel("optimizer step (batch of 32 x 128 tokens)")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(f"Demo model, {log['n_params']:,} parameters, "
                 f"{log['train_minutes']} min on 1 CPU thread", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(svg)
    print(f"wrote {svg}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    p.add_argument("--data", default=str(ROOT / "data" / "tinyshakespeare.txt"))
    p.add_argument("--out", default=None,
                   help="default: minigpt/demo (gpt2), minigpt/demo_llama (llama)")
    p.add_argument("--log", default=None, help="training log JSON (default: in --out)")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--n-ctx", type=int, default=128)
    p.add_argument("--n-embd", type=int, default=192)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-kv-head", type=int, default=2, help="llama only")
    p.add_argument("--n-hidden", type=int, default=512, help="llama's SwiGLU width")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--check", action="store_true", help="only test the export")
    p.add_argument("--plot", action="store_true",
                   help="only draw the loss chart from --log")
    args = p.parse_args(argv)
    folder = "demo_llama" if args.arch == "llama" else "demo"
    args.out = args.out or str(ROOT / "minigpt" / folder)
    args.log = args.log or str(Path(args.out) / "training_log.json")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plot:
        return plot(args.log)
    check_export_llama(args) if args.arch == "llama" else check_export(args)
    if not args.check:
        train(args)


if __name__ == "__main__":
    main()
