"""What each sampling knob does to real distributions (chapter 18's figures and chart).

Not a timing: the next character after "th" in Tiny Shakespeare, counted, turned
into logits (log-counts), and reshaped by each knob through
`minigpt.sampling.next_token_probs`; and the demo model's next-token distribution
after "ROMEO:\nI will" under three settings. The distributions are stored with the
machine like every result (chapter 18's prose quotes them), and the first is drawn
as five panels stacked one above the other, so the chart stays legible on a phone.
Writes benchmarks/results/sampling_knobs.json and docs/assets/charts/sampling-knobs.svg.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from benchmarks.common import ROOT, chart_path, pyplot, save_results
from minigpt.models import load_model, load_tokenizer
from minigpt.sampling import next_token_probs

KNOBS = {"as counted (T = 1)": {}, "temperature 0.5": {"temperature": 0.5},
         "temperature 2": {"temperature": 2.0}, "top-k 3": {"top_k": 3},
         "top-p 0.9": {"top_p": 0.9}}


def next_char_counts(context: str = "th") -> dict[str, int]:
    """How often each character follows `context` in Tiny Shakespeare, most first."""
    text = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    n = len(context)
    after = Counter(text[i + n] for i in range(len(text) - n)
                    if text[i:i + n] == context)
    return dict(sorted(after.items(), key=lambda kv: (-kv[1], kv[0])))


def demo_model_example(prompt: str = "ROMEO:\nI will", shown: int = 4) -> dict:
    """The demo model's next token after prompt: what each knob keeps, the top few."""
    from minigpt import DEMO_MODEL

    model, tokenizer = load_model(DEMO_MODEL), load_tokenizer(DEMO_MODEL)
    logits = model.forward(np.array(tokenizer.encode(prompt)))[-1]
    out = {"prompt": prompt}
    for name, knobs in {"T = 1": {}, "temperature 0.5": {"temperature": 0.5},
                        "top-p 0.9": {"top_p": 0.9}}.items():
        probs = next_token_probs(logits, **knobs)
        top = np.argsort(-probs, kind="stable")[:shown]
        out[name] = {"kept": int((probs > 0).sum()),
                     "tokens": [tokenizer.decode([int(t)]) for t in top],
                     "probs": [float(probs[t]) for t in top]}
    return out


def run(quick: bool = False) -> dict:
    counts = next_char_counts("th")
    logits = np.log(np.array(list(counts.values()), dtype=np.float64))
    results = {"context": "th", "chars": list(counts), "counts": list(counts.values()),
               "probs": {name: next_token_probs(logits, **knobs).tolist()
                         for name, knobs in KNOBS.items()},
               "demo_model": demo_model_example()}
    save_results("sampling_knobs", results,
                 command="python -m benchmarks sampling_knobs")
    draw(results)
    return results


def draw(results: dict, shown: int = 12) -> None:
    """Five panels, one per knob, stacked: the same twelve characters in each."""
    plt = pyplot()
    labels = [repr(c)[1:-1] if c.strip() else repr(c) for c in results["chars"]]
    names = list(results["probs"])
    fig, axes = plt.subplots(len(names), 1, figsize=(4.8, 1.45 * len(names) + 0.6),
                             sharex=True, sharey=True)
    for ax, name in zip(axes, names, strict=True):
        probs = results["probs"][name][:shown]
        ax.bar(range(len(probs)), probs, color="#3f51b5")
        ax.set_title(name, fontsize=10, loc="left")
        ax.set_ylim(0, 1)
        ax.set_yticks([0, 0.5, 1])
        ax.grid(True, axis="y", alpha=0.3)
        ax.tick_params(labelbottom=True, labelsize=9)  # every panel names its bars
        ax.set_xticks(range(len(probs)), labels[:shown])
    axes[len(names) // 2].set_ylabel("probability", fontsize=10)
    fig.suptitle(f"Next character after {results['context']!r} in Tiny Shakespeare\n"
                 f"({sum(results['counts']):,} occurrences), reshaped by each knob",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(chart_path("sampling-knobs"), format="svg", metadata={"Date": None})
    plt.close(fig)


if __name__ == "__main__":
    run()
