"""Train the demo model shipped in `minigpt/demo/`: a small GPT-2 on Tiny Shakespeare.

Optional: it needs PyTorch and safetensors (`pip install -e ".[ref]"`); nothing in the
book or the tests runs it. It trains the project's own byte-level BPE tokenizer
(`minigpt.tokenizer.train_bpe`) on the training split, then a GPT-2-architecture
model written here in PyTorch (pre-norm blocks, GELU tanh, tied output head), and
exports it in Hugging Face's GPT-2 layout (Conv1D weights stored [in, out], fp16
safetensors), so that `minigpt.load_model` reads it like any other checkpoint.

Leaves out on purpose: GPUs, mixed precision, gradient accumulation and resuming.

    python tools/train_demo.py --out minigpt/demo          # the shipped run
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
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minigpt.model import load_model  # noqa: E402
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
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to(dtype).contiguous()
               for name, t in hf_tensors(model).items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
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
    tok = ByteBPE(*train_bpe(train_text, args.vocab_size))
    print(f"tokenizer: {len(tok.vocab)} tokens in {time.time() - t0:.0f} s", flush=True)
    train_ids = torch.tensor(tok.encode(train_text))
    val_ids = torch.tensor(tok.encode(val_text))
    print(f"tokens: {len(train_ids)} train, {len(val_ids)} validation", flush=True)

    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    model = TinyGPT(len(tok.vocab), args.n_ctx, args.n_embd, args.n_layer,
                    args.n_head, args.dropout)
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
    export(model, tok, args, Path(args.out))
    plot(args.log)
    print(f"final: train {log['final_train_loss']}, val {log['final_val_loss']}, "
          f"{log['train_minutes']} min; wrote {args.out}", flush=True)


def plot(log_path: str | Path, svg: Path = ROOT / "docs/assets/charts/training-loss.svg"
         ) -> None:
    """Draw the train and validation loss curves of a training log as an SVG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    plt.rcParams["svg.hashsalt"] = "minigpt"  # stable ids: a rerun gives the same file
    fig.savefig(svg, metadata={"Date": None})
    print(f"wrote {svg}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "data" / "tinyshakespeare.txt"))
    p.add_argument("--out", default=str(ROOT / "minigpt" / "demo"))
    p.add_argument("--log", default=None, help="training log JSON (default: in --out)")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--n-ctx", type=int, default=128)
    p.add_argument("--n-embd", type=int, default=192)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
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
    args.log = args.log or str(Path(args.out) / "training_log.json")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plot:
        return plot(args.log)
    check_export(args)
    if not args.check:
        train(args)


if __name__ == "__main__":
    main()
