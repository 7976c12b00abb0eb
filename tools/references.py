"""Saved outputs of the reference libraries, so every Check runs without them.

The book checks its layers against PyTorch, transformers and tiktoken. A reader
without those packages still sees the comparison run: each Check also compares
against a small file in `data/references/`, written by this script from the
real library, together with the inputs that made it.

    python tools/references.py            # regenerate every file
    python tools/references.py gelu       # regenerate some, by name
    python tools/references.py --check    # recompute in memory; exit 1 if stale
    python tools/references.py --list     # names, files and the packages they need

`--check` also exits 1 when it cannot check an entry because its package is
missing (it prints SKIP and the package).

`tests/test_references.py` runs the check under pytest (marked `reference`); it
skips an entry whose package is missing, and .ci/run turns skips into failures,
so CI verifies every file against the live library.

Adding an entry (the registry API)
----------------------------------
Write a function of no arguments and decorate it with `@reference`:

    @reference("gelu", needs=("torch",))
    def _gelu() -> dict[str, np.ndarray]:
        '''torch's GELU, both forms, on a float32 grid.'''   # first line -> index.json
        import torch                       # import the reference inside the function
        x = np.linspace(-10, 10, 1001, dtype=np.float32)    # fixed or seeded inputs
        return {"x": x, "gelu": torch.nn.functional.gelu(...).numpy()}

- `name` names the file: `data/references/<name>.npz` (a dict of arrays; keys
  may contain dots, e.g. "c_fc.weight"), or `<name>.json` with `fmt="json"`
  (any JSON-able dict: str, int, float, bool, list, dict).
- Return the inputs as well as the outputs, so a page can run its own code on
  exactly the inputs the reference saw. Make inputs with a seeded
  `np.random.default_rng(seed)`, never with the reference library's own RNG.
- `needs`: the modules the function imports (checked before it runs).
- `rtol`, `atol`: how closely a recomputation must match the saved floats for
  `--check` (default 1e-5, 1e-6: libraries round differently on other CPUs);
  integers, booleans and strings must match exactly; shapes and keys always.
- Keep each file well under `MAX_BYTES` (100 KB); `--check` fails a larger one.

Pages load a file with `np.load("data/references/<name>.npz")` or `json.load`,
from the repository root. `data/references/index.json` lists every entry, the
packages it needs and the versions that made it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import io
import json
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DIRECTORY = ROOT / "data" / "references"
MAX_BYTES = 100_000


@dataclass(frozen=True)
class Reference:
    """One registered reference computation and how to compare its output."""

    name: str
    make: Callable[[], dict]
    needs: tuple[str, ...] = ()
    fmt: str = "npz"
    rtol: float = 1e-5
    atol: float = 1e-6

    @property
    def path(self) -> Path:
        return DIRECTORY / f"{self.name}.{self.fmt}"

    @property
    def about(self) -> str:
        """The first line of the function's docstring."""
        return (self.make.__doc__ or "").strip().split("\n")[0]


REGISTRY: dict[str, Reference] = {}


def reference(name: str, needs: tuple[str, ...] = (), fmt: str = "npz",
              rtol: float = 1e-5, atol: float = 1e-6) -> Callable:
    """Register a function of no arguments as the reference called `name`."""
    if fmt not in ("npz", "json"):
        raise ValueError(f"reference {name!r}: fmt must be npz or json, not {fmt!r}")

    def register(make: Callable[[], dict]) -> Callable[[], dict]:
        if name in REGISTRY:
            raise ValueError(f"reference {name!r} is registered twice")
        REGISTRY[name] = Reference(name, make, tuple(needs), fmt, rtol, atol)
        return make

    return register


# --- reading and writing ----------------------------------------------------

def encode(ref: Reference, data: dict) -> bytes:
    """The file's bytes: the same data always gives the same bytes (no timestamps)."""
    if ref.fmt == "json":
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for key in sorted(data):
            array = np.asarray(data[key])
            if array.dtype == object:
                raise TypeError(f"reference {ref.name!r}: {key!r} is an object array")
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, member.getvalue())
    return buffer.getvalue()


def load(ref: Reference, path: Path | None = None) -> dict:
    """The saved data of one entry, as the pages read it (no pickle)."""
    path = path or ref.path
    if ref.fmt == "json":
        return json.loads(path.read_text())
    with np.load(path, allow_pickle=False) as saved:
        return {key: saved[key] for key in saved.files}


def differences(ref: Reference, saved: dict, fresh: dict, where: str = "") -> list[str]:
    """What differs between saved and freshly computed data; empty if they agree."""
    problems: list[str] = []
    if set(saved) != set(fresh):
        return [f"{where}keys differ: saved {sorted(saved)}, now {sorted(fresh)}"]
    for key in sorted(saved):
        a, b, at = saved[key], fresh[key], f"{where}{key}"
        if isinstance(a, dict) or isinstance(b, dict):
            if not (isinstance(a, dict) and isinstance(b, dict)):
                problems.append(f"{at}: saved {type(a).__name__}, "
                                f"now {type(b).__name__}")
            else:
                problems += differences(ref, a, b, f"{at}.")
            continue
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            problems.append(f"{at}: saved shape {a.shape}, now {b.shape}")
        elif a.dtype.kind in "fc" and b.dtype.kind in "fc":
            if not np.allclose(a, b, rtol=ref.rtol, atol=ref.atol, equal_nan=True):
                worst = float(np.nanmax(np.abs(a.astype(np.float64) - b)))
                problems.append(f"{at}: values differ by up to {worst:.3g} "
                                f"(rtol {ref.rtol:g}, atol {ref.atol:g})")
        elif a.dtype != b.dtype and not (a.dtype.kind in "iu" and b.dtype.kind in "iu"):
            problems.append(f"{at}: saved dtype {a.dtype}, now {b.dtype}")
        elif not np.array_equal(a, b):
            problems.append(f"{at}: values differ")
    return problems


# --- running the registry ----------------------------------------------------

def shown(path: Path) -> str:
    """A path as the reader types it: relative to the repository root if inside."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def missing(ref: Reference) -> list[str]:
    """The modules `ref` needs that cannot be imported here."""
    absent = []
    for module in ref.needs:
        try:
            importlib.import_module(module)
        except ImportError:
            absent.append(module)
    return absent


def compute(ref: Reference) -> dict:
    """Run the reference, as data that survives a round trip through its file."""
    absent = missing(ref)
    if absent:
        raise ModuleNotFoundError(f"reference {ref.name!r} needs {', '.join(absent)} "
                                  f"(pip install -c constraints.txt -e '.[ref]')")
    data = ref.make()
    if ref.fmt == "json":
        return json.loads(encode(ref, data))
    return {key: np.asarray(value) for key, value in data.items()}


def check(ref: Reference) -> list[str]:
    """Recompute `ref` in memory and compare with its file; empty if up to date."""
    if not ref.path.is_file():
        return [f"{shown(ref.path)} is missing: run python tools/references.py"]
    size = ref.path.stat().st_size
    problems = [] if size <= MAX_BYTES else [f"{size:,} bytes, over {MAX_BYTES:,}"]
    fresh = compute(ref)
    if len(encode(ref, fresh)) > MAX_BYTES:
        problems.append(f"new data would be over {MAX_BYTES:,} bytes")
    return problems + differences(ref, load(ref), fresh)


def versions(modules: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of numpy and the reference packages, for index.json."""
    names = {"torch": "torch", "transformers": "transformers", "tiktoken": "tiktoken"}
    out = {}
    for module in ("numpy", *modules):
        try:
            out[module] = importlib.metadata.version(names.get(module, module))
        except importlib.metadata.PackageNotFoundError:
            out[module] = "unknown"
    return out


def index_entry(ref: Reference) -> dict:
    """The row of index.json that describes `ref` (without the versions)."""
    return {"file": ref.path.name, "needs": list(ref.needs), "about": ref.about}


def write(refs: list[Reference]) -> None:
    """Regenerate the files of `refs` and their rows of index.json."""
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    index_path = DIRECTORY / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    for ref in refs:
        blob = encode(ref, compute(ref))
        if len(blob) > MAX_BYTES:
            raise ValueError(f"reference {ref.name!r} is {len(blob):,} bytes, "
                             f"over {MAX_BYTES:,}: use smaller inputs")
        ref.path.write_bytes(blob)
        index[ref.name] = {**index_entry(ref), "made_with": versions(ref.needs)}
        print(f"wrote {shown(ref.path)} ({len(blob):,} bytes)")
    index = {name: index[name] for name in sorted(index) if name in REGISTRY}
    index_path.write_text(json.dumps(index, indent=1) + "\n")


def check_index() -> list[str]:
    """index.json lists exactly the registry, each row as the registry says."""
    path = DIRECTORY / "index.json"
    if not path.is_file():
        return ["data/references/index.json is missing: run python tools/references.py"]
    index = json.loads(path.read_text())
    problems = [f"index.json lists {name!r}, which is not registered"
                for name in sorted(set(index) - set(REGISTRY))]
    for name, ref in REGISTRY.items():
        row = {k: v for k, v in index.get(name, {}).items() if k != "made_with"}
        if row != index_entry(ref):
            problems.append(f"index.json row {name!r} is {row or 'missing'}, "
                            f"expected {index_entry(ref)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="entries to regenerate or check "
                        "(default: all)")
    parser.add_argument("--check", action="store_true",
                        help="recompute in memory and compare with the saved files")
    parser.add_argument("--list", action="store_true", help="list the registry")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in REGISTRY]
    if unknown:
        print(f"references: unknown name(s) {unknown}; known: {sorted(REGISTRY)}",
              file=sys.stderr)
        return 2
    refs = [REGISTRY[n] for n in (args.names or sorted(REGISTRY))]
    if args.list:
        for ref in refs:
            print(f"{ref.name:16} {shown(ref.path)}  needs "
                  f"{', '.join(ref.needs) or 'nothing'}  {ref.about}")
        return 0
    if not args.check:
        write(refs)
        return 0
    failed = 0
    for problem in check_index():
        print(f"STALE  {problem}")
        failed += 1
    for ref in refs:
        absent = missing(ref)
        if absent:
            print(f"SKIP   {ref.name}: needs {', '.join(absent)}")
            failed += 1
            continue
        problems = check(ref)
        for problem in problems:
            print(f"STALE  {ref.name}: {problem}")
        if not problems:
            print(f"ok     {ref.name}")
        failed += bool(problems)
    return 1 if failed else 0


# --- the registry: chapters 8 to 14 -------------------------------------------

def _set_parameters(module, seed: int, C: int) -> dict[str, np.ndarray]:
    """Seeded float32 weights copied into a torch module's parameters, by name.

    Layer-norm gains are drawn near 1, everything else with std 1/sqrt(C), the
    scale of a trained model's weights."""
    import torch

    rng = np.random.default_rng(seed)
    weights = {}
    for name, p in module.named_parameters():
        gain = name.startswith("ln_") and name.endswith(".weight")
        w = (1.0 if gain else 0.0) + (0.2 if gain else C**-0.5) * rng.standard_normal(
            tuple(p.shape))
        weights[name] = w.astype(np.float32)
        with torch.no_grad():
            p.copy_(torch.from_numpy(weights[name]))
    return weights


@reference("gelu", needs=("torch",))
def _gelu() -> dict[str, np.ndarray]:
    """torch's erfc and GELU (exact and tanh forms), float64, on float32 inputs."""
    import torch

    grid = np.linspace(-10, 10, 1001, dtype=np.float32)
    x = np.concatenate([grid, np.array([-1e4, -88, 88, 1e4], np.float32)])
    t = torch.from_numpy(x).double()  # float64: a truth for float32 code
    return {"x": x,
            "erfc": torch.special.erfc(t).numpy(),
            "gelu": torch.nn.functional.gelu(t, approximate="none").numpy(),
            "gelu_tanh": torch.nn.functional.gelu(t, approximate="tanh").numpy()}


@reference("layer_norm", needs=("torch",))
def _layer_norm() -> dict[str, np.ndarray]:
    """torch.nn.functional.layer_norm on rows with a non-zero mean, float32."""
    import torch

    rng = np.random.default_rng(1)
    x = (3 + 4 * rng.standard_normal((5, 33))).astype(np.float32)
    g = rng.standard_normal(33).astype(np.float32)
    b = rng.standard_normal(33).astype(np.float32)
    eps = 1e-5
    # quiet rows: variances from 1e-7 to 1e-3, where eps is felt (inside the root)
    spread = np.array([3e-4, 1e-3, 3e-3, 1e-2, 3e-2], np.float32)[:, None]
    quiet = (1 + spread * rng.standard_normal((5, 33))).astype(np.float32)
    def norm(rows: np.ndarray) -> np.ndarray:
        return torch.nn.functional.layer_norm(
            torch.from_numpy(rows), (33,), torch.from_numpy(g), torch.from_numpy(b),
            eps=eps).numpy()
    return {"x": x, "g": g, "b": b, "eps": np.float64(eps), "out": norm(x),
            "x_quiet": quiet, "out_quiet": norm(quiet)}


@reference("softmax", needs=("torch",))
def _softmax() -> dict[str, np.ndarray]:
    """torch.softmax and torch.log_softmax along both axes, and on huge logits."""
    import torch

    rng = np.random.default_rng(0)
    scores = (5 * rng.standard_normal((4, 9))).astype(np.float32)
    big = np.array([1e4, 1e4 - 1], dtype=np.float32)
    t = torch.from_numpy(scores)
    return {"scores": scores, "big": big,
            "softmax_rows": torch.softmax(t, -1).numpy(),
            "softmax_cols": torch.softmax(t, 0).numpy(),
            "log_softmax_rows": torch.log_softmax(t, -1).numpy(),
            "log_softmax_cols": torch.log_softmax(t, 0).numpy(),
            "softmax_big": torch.softmax(torch.from_numpy(big), 0).numpy()}


@reference("gpt2_mlp", needs=("torch", "transformers"))
def _gpt2_mlp() -> dict[str, np.ndarray]:
    """transformers' GPT2MLP (gelu_new) with seeded weights, C = 8, T = 4."""
    import torch
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    C, T = 8, 4
    config = GPT2Config(n_embd=C, n_head=1)
    assert config.activation_function == "gelu_new"
    mlp = GPT2MLP(4 * C, config).eval()
    weights = _set_parameters(mlp, seed=13, C=C)
    x = np.random.default_rng(14).standard_normal((T, C)).astype(np.float32)
    with torch.no_grad():
        out = mlp(torch.from_numpy(x)).numpy()
    return {**weights, "x": x, "out": out}


@reference("gpt2_block", needs=("torch", "transformers"))
def _gpt2_block() -> dict[str, np.ndarray]:
    """transformers' GPT2Block (eager, causal) with seeded weights, C = 16, 4 heads."""
    import torch
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    C, n_head, T = 16, 4, 5
    config = GPT2Config(n_embd=C, n_head=n_head, attn_implementation="eager")
    block = GPT2Block(config, layer_idx=0).eval()
    weights = _set_parameters(block, seed=15, C=C)
    x = np.random.default_rng(16).standard_normal((T, C)).astype(np.float32)
    # eager attention takes the causal mask from the caller: additive, 4-D
    causal = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)[None, None]
    with torch.no_grad():
        out = block(torch.from_numpy(x)[None], attention_mask=causal)[0].numpy()
    return {**weights, "x": x, "n_head": np.int64(n_head), "out": out}


@reference("causal_attention", needs=("torch",))
def _causal_attention() -> dict[str, np.ndarray]:
    """torch's scaled_dot_product_attention: causal, 2 heads, and a boolean mask."""
    import torch

    rng = np.random.default_rng(11)
    q, k, v = (rng.standard_normal((2, 6, 4)).astype(np.float32) for _ in range(3))
    keep = rng.random((6, 6)) < 0.6
    keep[:, 0] = True  # every query sees at least one key
    sdpa = torch.nn.functional.scaled_dot_product_attention
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    return {"q": q, "k": k, "v": v, "keep": keep,
            "causal": sdpa(tq, tk, tv, is_causal=True).numpy(),
            "masked": sdpa(tq, tk, tv, attn_mask=torch.from_numpy(keep)).numpy()}


@reference("gpt2_attention", needs=("torch", "transformers"))
def _gpt2_attention() -> dict[str, np.ndarray]:
    """transformers' GPT2Attention (eager, causal), seeded weights, C = 12, 3 heads."""
    import torch
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    C, n_head, T = 12, 3, 5
    config = GPT2Config(n_embd=C, n_head=n_head, attn_implementation="eager")
    attn = GPT2Attention(config, layer_idx=0).eval()
    weights = _set_parameters(attn, seed=19, C=C)
    x = np.random.default_rng(20).standard_normal((T, C)).astype(np.float32)
    causal = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)[None, None]
    with torch.no_grad():
        out = attn(torch.from_numpy(x)[None], attention_mask=causal)[0][0].numpy()
    return {**weights, "x": x, "n_head": np.int64(n_head), "out": out}


# Entries for later chapters go below, one function each.


# --- chapters 15 to 17 --------------------------------------------------------

# Text chosen to break tokenizers: accents, a zero-width-joined emoji family,
# CJK, tabs and runs of spaces, digits, contractions in both cases, long runs.
TOKENIZER_TEXTS = [
    "Zoë's 👩‍👩‍👧‍👦 東京タワー\t\t  1234567 DON'T " + "!" * 40,
    "Hello world! Naïve café, 東京 👋",
    "e\u0301 vs \u00e9, ﬁ, ١٢٣ ½ Ⅻ, I'm you're he'll WE'VE",
    "a  b   c\t\td\n\n\nf \n g\r\n h   ",
]


@reference("tiktoken_gpt2", needs=("tiktoken",), fmt="json")
def _tiktoken_gpt2() -> dict:
    """tiktoken's GPT-2 ids of awkward texts, and a hash of Tiny Shakespeare's ids."""
    import hashlib

    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    folder = ROOT / "data" / "gpt2"  # tools/fetch_assets.py puts GPT-2's files here
    if not (folder / "vocab.bpe").is_file():
        raise FileNotFoundError(f"{folder} has no GPT-2 vocabulary: run make install "
                                f"or python tools/fetch_assets.py")
    ranks = data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"),
                                            str(folder / "encoder.json"))
    pattern = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
               r"""|\s+(?!\S)|\s+""")
    encoding = tiktoken.Encoding("gpt2", pat_str=pattern, mergeable_ranks=ranks,
                                 special_tokens={"<|endoftext|>": 50256})
    corpus = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    ids = encoding.encode_ordinary(corpus)
    # the corpus's 338,025 ids are too many to store: keep a fingerprint
    fingerprint = hashlib.sha256(json.dumps(ids).encode()).hexdigest()
    return {"ids": {t: encoding.encode_ordinary(t) for t in TOKENIZER_TEXTS},
            "corpus_tokens": len(ids), "corpus_sha256": fingerprint}


@reference("safetensors_file", needs=("safetensors",))
def _safetensors_file() -> dict[str, np.ndarray]:
    """The bytes of a file written by safetensors' save_file, and its arrays."""
    import tempfile

    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {"f32": rng.standard_normal((4, 5)).astype(np.float32),
               "f16": rng.standard_normal(7).astype(np.float16),
               "i64": np.arange(10, dtype=np.int64).reshape(2, 5),
               "u8": np.arange(3, dtype=np.uint8)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ref.safetensors"
        save_file(tensors, str(path))
        blob = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    return {"file": blob, **tensors}


@reference("gpt2_lm_head", needs=("torch", "transformers"))
def _gpt2_lm_head() -> dict[str, np.ndarray]:
    """transformers' GPT2LMHeadModel logits, seeded weights, 2 layers, C = 24."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=24, n_layer=2,
                        n_head=4, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    rng = np.random.default_rng(17)
    weights = {}
    for name, p in model.named_parameters():  # the head is tied: not listed
        gain = ".ln_" in name and name.endswith(".weight")
        w = (1.0 if gain else 0.0) + (0.2 if gain else 24**-0.5) * rng.standard_normal(
            tuple(p.shape))
        weights[name] = w.astype(np.float32)
        with torch.no_grad():
            p.copy_(torch.from_numpy(weights[name]))
    ids = np.random.default_rng(18).integers(0, 64, size=16)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)[None]).logits[0].numpy()
    shape = {"vocab_size": 64, "n_ctx": 16, "n_embd": 24, "n_layer": 2, "n_head": 4}
    return {**weights, **{k: np.int64(v) for k, v in shape.items()},
            "ids": ids, "logits": logits}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # entries may import minigpt from this checkout
    sys.exit(main())
