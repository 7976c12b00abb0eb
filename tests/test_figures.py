"""The binding of prose to results (tools/figures.py), and the rule it serves.

The rule: every measured figure in a page's prose comes from benchmarks/results.
`test_every_measured_figure_is_bound` scales the stored results, renders every page
both ways and requires each figure with a unit of measure to change; facts may stay
literal only through ALLOWED below, each with its reason.
`python -m tests.test_figures` prints the census, page by page.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jupytext
import pytest

from tools import figures
from tools.figures import FigureError, Figures, lookup, render_markdown

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = figures.RESULTS  # the stored results, whatever $MINIGPT_RESULTS says

RECORD = {
    "topic": "speed",
    "date": "2026-01-02T03:04:05+00:00",
    "command": "python -m benchmarks speed",
    "machine": {"python": "3.11.7", "numpy": "2.4.6", "blas": "openblas 0.3.31",
                "blas_threads": 2, "cpu": "Test CPU", "cores": 2,
                "platform": "linux-x86_64"},
    "results": {"n": 512, "gflops": {"blas": 53.16, "ijk": 0.653},
                "steps": [0.5, 0.25], "probs": {"top-p 0.9": 0.49}},
}


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "speed.json").write_text(json.dumps(RECORD))
    return tmp_path


def page(text: str) -> str:
    return "---\nrender_macros: true\n---\n" + textwrap.dedent(text)


# --- unit tests of v, fig, num, measured ---------------------------------------


def test_v_reads_the_results_object(folder):
    f = Figures("docs/p.md", folder)
    assert f.v("speed", "n") == 512
    assert f.v("speed", "gflops.blas") == 53.16
    assert f.v("speed", "gflops") == {"blas": 53.16, "ijk": 0.653}
    assert f.v("speed", "steps.1") == 0.25  # an integer part indexes a list
    assert f.v("speed", "probs.top-p 0.9") == 0.49  # a key that holds a dot


def test_lookup_prefers_the_longest_key():
    assert lookup({"a.b": 1, "a": {"b": 2}}, "a.b") == 1
    assert lookup({"a": {"b": [10, 20]}}, "a.b.-1") == 20


@pytest.mark.parametrize("topic, key, named", [
    ("speed", "gflops.blass", "'gflops' has no 'blass' (it has: blas, ijk)"),
    ("speed", "steps.2", "'steps.2': a list of 2"),
    ("speed", "n.x", "'n' is a int"),
    ("sped", "n", "no results file for topic 'sped'"),
])
def test_a_missing_figure_names_page_topic_and_key(folder, topic, key, named):
    with pytest.raises(FigureError) as err:
        Figures("docs/chapters/06-x.md", folder).v(topic, key)
    message = str(err.value)
    assert message.startswith("docs/chapters/06-x.md: ")
    assert named in message
    if topic == "speed":
        assert f"topic 'speed' has no figure '{key}'" in message


def test_fig_and_num_format(folder):
    f = Figures("docs/p.md", folder)
    assert f.fig("speed", "gflops.blas", ".1f") == "53.2"
    assert f.fig("speed", "n") == "512"
    assert f.fig("speed", "n", ",") == "512"
    blas, ijk = f.v("speed", "gflops.blas"), f.v("speed", "gflops.ijk")
    assert f.num(blas / ijk, ".0f") == "81"
    assert f.num(f.v("speed", "steps.1") / f.v("speed", "steps.0"), ".0%") == "50%"


@pytest.mark.parametrize("call, named", [
    (lambda f: f.fig("speed", "gflops.blas"), "is a float: give a format"),
    (lambda f: f.fig("speed", "gflops", ".1f"), "not a number"),
    (lambda f: f.fig("speed", "n", ".1q"), "bad format '.1q'"),
    (lambda f: f.num("12", ".1f"), "num() is '12', not a number"),
])
def test_a_figure_that_cannot_be_formatted_fails(folder, call, named):
    with pytest.raises(FigureError, match=re.escape(named)):
        call(Figures("docs/p.md", folder))


def test_measured_names_command_date_and_machine(folder):
    (folder / "other.json").write_text(json.dumps({**RECORD, "command": "make bench"}))
    box = Figures("docs/p.md", folder).measured("speed", "other")
    assert box.startswith('<div class="admonition info')
    assert figures.BOX_TITLE in box
    for text in ("<code>speed</code>: <code>python -m benchmarks speed</code>",
                 "<code>other</code>: <code>make bench</code>", "2026-01-02",
                 "Test CPU, 2 cores, Python 3.11.7, NumPy 2.4.6, openblas 0.3.31"):
        assert text in box
    assert box.count("<li>") == 2
    with pytest.raises(FigureError, match="at least one topic"):
        Figures("docs/p.md", folder).measured()


def test_results_folder_comes_from_the_environment(folder, monkeypatch):
    monkeypatch.setenv(figures.RESULTS_ENV, str(folder))
    assert figures.results_dir() == folder
    assert Figures("docs/p.md").v("speed", "n") == 512
    monkeypatch.delenv(figures.RESULTS_ENV)
    assert figures.results_dir() == ROOT / "benchmarks" / "results"


def test_a_changed_file_is_read_again(folder):
    f = Figures("docs/p.md", folder)
    assert f.v("speed", "n") == 512
    record = {**RECORD, "results": {**RECORD["results"], "n": 1024}}
    path = folder / "speed.json"
    path.write_text(json.dumps(record))
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    assert f.v("speed", "n") == 1024


# --- rendering pages, as the build and the page tests do -----------------------


def test_the_site_configures_the_binding():
    settings = figures.macros_settings(ROOT)
    assert settings["render_by_default"] is False, "pages opt in"
    assert settings["on_undefined"] == "strict"
    assert settings["on_error_fail"] is True
    assert (ROOT / f"{settings['module_name']}.py").resolve() == Path(
        figures.__file__).resolve()


def test_a_page_renders_only_if_it_opts_in(folder):
    text = "# T\n\nBLAS ran at {{ fig('speed', 'gflops.blas', '.1f') }} GFLOPS.\n"
    assert render_markdown(text, "docs/p.md", ROOT, folder) == text
    out = render_markdown(page(text), "docs/p.md", ROOT, folder)
    assert out == page(text.replace("{{ fig('speed', 'gflops.blas', '.1f') }}", "53.2"))
    assert out.count("\n") == page(text).count("\n"), "page lines must stay put"


@pytest.mark.parametrize("text, named", [
    ("{{ fig('speed', 'gflop.blas', '.1f') }}", "topic 'speed' has no figure "
                                                "'gflop.blas'"),
    ("{{ fgi('speed', 'n') }}", "'fgi' is undefined"),
    ("{{ fig('speed', 'n' }}", "docs/chapters/06-x.md: line 5: "),
])
def test_a_misspelled_page_fails_naming_page_and_key(folder, text, named):
    with pytest.raises(FigureError) as err:
        render_markdown(page(f"# T\n{text}\n"), "docs/chapters/06-x.md", ROOT, folder)
    assert str(err.value).startswith("docs/chapters/06-x.md: ")
    assert named in str(err.value)


NOTEBOOK = """\
# ---
# jupyter:
#   render_macros: true
# ---

# %% [markdown]
# # Speed
#
# BLAS: {{ fig("speed", "gflops.blas", ".2f") }} GFLOPS.

# %%
table = {"a": {"b": 1}}
"""


def test_a_notebook_renders_its_markdown_cells(folder, tmp_path):
    path = tmp_path / "nb.py"
    path.write_text(NOTEBOOK)
    nb = figures.read_notebook(path, "docs/nb.py", ROOT, folder)
    assert nb.cells[0].source == "# Speed\n\nBLAS: 53.16 GFLOPS."
    assert nb.cells[1].source == 'table = {"a": {"b": 1}}'
    path.write_text(NOTEBOOK.replace("render_macros: true", "other: 1"))
    nb = figures.read_notebook(path, "docs/nb.py", ROOT, folder)
    assert "{{ fig(" in nb.cells[0].source, "a notebook that does not opt in"
    path.write_text(NOTEBOOK.replace("gflops.blas", "gflops.blsa"))
    with pytest.raises(FigureError, match="docs/nb.py: .*'gflops.blsa'"):
        figures.read_notebook(path, "docs/nb.py", ROOT, folder)


def test_notebook_reads_render_only_that_file_and_only_while_active(folder, tmp_path):
    path, other = tmp_path / "nb.py", tmp_path / "other.py"
    path.write_text(NOTEBOOK)
    other.write_text(NOTEBOOK)
    f = Figures("docs/nb.py", folder)
    env = figures.environment({"on_undefined": "strict"}, f)
    read = jupytext.read
    with figures.notebook_reads(str(path),
                                lambda s: figures.render_string(env, s, "nb")):
        assert "53.16" in jupytext.read(str(path)).cells[0].source
        assert "{{ fig(" in jupytext.read(str(other)).cells[0].source
    assert jupytext.read is read


# --- the rule: scale the results, and every measured figure must change ---------

# A number with a unit of measure, in prose; in a run such as "37.3, 33.2 and
# 32.4 ms" or "between 12.0 and 12.8 GB/s" every number counts. `×` or `x` followed
# by a number or a one-letter name is a product of sizes (4096 × 4096, 3 x n).
NUMBER = r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d|[.,]\d)"
UNIT = (r"GFLOPS|GFLOP/s|TFLOPS|tok/s|tokens/s|tokens per second|"
        r"tokens a second|GB/s|MB/s|ms|µs|μs|ns|(?<= )s|seconds?|"
        r"milliseconds?|microseconds?|nanoseconds?|times|per ?cent|%|"
        r"[×x](?! ?(?:\d|[A-Za-z]\b))")
# Lists: "between 12.0 and 12.8", "37.3, 33.2 and 32.4", "12 against 24", "5-9".
# A bare "and" joins no list: in "4.9 ns at stride 32 and 5.9 ns", 32 is no figure.
LIST = (f"(?:between {NUMBER} and |{NUMBER}(?:, {NUMBER})+,? (?:and|or) |"
        f"{NUMBER} (?:to|against) |{NUMBER}[–-])?")
SPACE = "[ \u00a0\u2009\u202f]?"
RUN = re.compile(f"{LIST}{NUMBER}{SPACE}(?:{UNIT})(?![\\w/])")
FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")

# Figures that are facts, not measurements, kept literal: (page, the words around
# the figure as the prose has them, on one line, why). A run of text may be shared
# by a fact and a measurement elsewhere on the page; the words pick the one meant.
ALLOWED = [
    ("docs/chapters/37-batching.md", "streams 20 GB/s",
     "an illustrative round bandwidth, in an exercise"),
    ("docs/chapters/37-batching.md", "at 100 GFLOP/s",
     "an illustrative round compute rate, in an exercise"),
    ("docs/chapters/00-introduction.md", "delivered 15 GB/s",
     "an illustrative round bandwidth, said to be one"),
    ("docs/chapters/00-introduction.md", "about 33 ms",
     "0.5 GB at the illustrative 15 GB/s: arithmetic on a made-up figure"),
    ("docs/chapters/00-introduction.md", "30 tokens per second",
     "one over the illustrative 33 ms"),
    ("docs/chapters/21-performance.py", "say, 15 GB/s",
     "an illustrative round bandwidth"),
    ("docs/chapters/21-performance.py", "about 30 tokens per second",
     "follows from the illustrative 15 GB/s"),
    ("docs/chapters/21-performance.py", "above 100%",
     "the bound a measured fraction may pass on a busy machine"),
    ("docs/chapters/21-performance.py", "does 512 times",
     "a 512-token prompt does 512 times a token's arithmetic: a count"),
    ("docs/appendix/training.md", "a 4x MLP", "the MLP's width, a design fact"),
    ("docs/appendix/training.md", "about 60 times fewer parameters",
     "the ratio of two parameter counts"),
    ("docs/appendix/training.md", "last 10%", "the validation split, a setting"),
    ("docs/appendix/training.md", "first 90%", "the training split, a setting"),
    ("docs/chapters/08-linear-and-gelu.md", "about 95% of the arithmetic",
     "the linear layers' share of a block's FLOPs, counted from the shapes"),
    ("docs/chapters/04-memory-layout.md", "8 times the size of the L3 cache",
     "the benchmark's array size over the cache size: a setting"),
    ("docs/chapters/14-transformer-block.md", "GPT-2 XL 48 times",
     "GPT-2 XL's 48 layers: a count"),
    ("docs/chapters/04-memory-layout.md", "stride 16 costs 16 times",
     "what counting cache lines predicts, before the measurement"),
    ("docs/chapters/08-linear-and-gelu.md", "off by 4%",
     "the rounding error of a float32 sum the page computes: exact arithmetic"),
    ("docs/chapters/09-layer-norm.md", "a 0.07% error",
     "1 - sqrt((C-1)/C) at C = 768: arithmetic"),
    ("docs/chapters/09-layer-norm.md", "variance (0.07%",
     "the same arithmetic, recalled"),
    ("docs/chapters/09-layer-norm.md", "about 300 times",
     "1/sqrt(eps) on a seeded row the page computes: arithmetic, not timing"),
    ("docs/chapters/09-layer-norm.md", "About 0.03%",
     "layer-norm parameters over all parameters: a count"),
    ("docs/chapters/10-softmax.md", "22,000 times", "e to the 10: arithmetic"),
    ("docs/chapters/11-self-attention.md", "(4 times as many)",
     "1,024 tokens over 256: a count"),
    ("docs/chapters/14-transformer-block.md", "only 18% of the arithmetic",
     "the attention core's share of the FLOPs, counted from the shapes"),
    ("docs/chapters/15-tokenization.md", "about 15,000 times",
     "how many merges the BPE loop applies: a count"),
    ("docs/chapters/19-generation.md", "reads 30% more tokens",
     "tokens read by a sliding window, counted"),
    ("docs/chapters/06-optimizing-matmul.md", "read and written 2048 times",
     "one pass over C per step of k at n = 2048: a count"),
    ("docs/chapters/18-sampling.md", "a favourite at 60%, the bar sits at 6%",
     "min-p's bar worked by hand: 0.1 times 60%"),
    ("docs/chapters/18-sampling.md", "with a favourite at 5%, at 0.5%",
     "the same rule, 0.1 times 5%"),
    ("docs/chapters/29-quantization.md", "| 1.00x |",
     "float32 against itself, the table's baseline: 1 by definition"),
    ("docs/chapters/29-quantization.md", "about 18 times the int8 step",
     "the ratio of two quantisation steps: arithmetic"),
    ("docs/chapters/29-quantization.md", "about 18 times the error",
     "the same ratio"),
]


def prose(markdown: str) -> str:
    """Markdown without front matter, code (fenced or inline), comments and math."""
    _, body, _ = figures.split_front_matter(markdown)
    kept, fence = [], ""
    for line in body.split("\n"):
        match = FENCE.match(line)
        mark = match.group(1) if match else ""
        if fence:
            if mark and line.strip() == mark and mark[0] == fence[0] and len(
                    mark) >= len(fence):
                fence = ""
            continue
        if mark:
            fence = mark
            continue
        kept.append(line)
    text = "\n".join(kept)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", " ", text)
    text = re.sub(r"\$\$.*?\$\$|\$[^$\n]+\$", " ", text, flags=re.S)
    return text


def measured_figures(text: str) -> list[tuple[str, int, int]]:
    """(figure, start, end) of every number with a unit in text."""
    found = []
    for run in RUN.finditer(text):
        unit = re.search(f"(?:{UNIT})$", run.group(0)).group(0)
        for number in re.finditer(NUMBER, run.group(0)):
            start = run.start() + number.start()
            space = " " if unit[0].isalpha() and unit != "x" else ""
            found.append((f"{number.group(0)}{space}{unit}",
                          start, run.start() + number.end()))
    return found


def pages() -> list[Path]:
    """Every page of the book: Markdown pages and the jupytext notebooks."""
    found = sorted(p for p in DOCS.rglob("*.md") if "assets" not in p.parts)
    return found + sorted(p for p in DOCS.rglob("*.py") if "assets" not in p.parts)


def page_prose(path: Path, folder: Path) -> str:
    """The prose of a page as rendered from the results in folder, on one line."""
    rel = path.relative_to(ROOT).as_posix()
    if path.suffix == ".py":
        nb = figures.read_notebook(path, rel, ROOT, folder)
        text = "\n\n".join(prose(c.source) for c in nb.cells
                           if c.cell_type == "markdown")
    else:
        text = prose(render_markdown(path.read_text(encoding="utf-8"), rel, ROOT,
                                     folder))
    return re.sub(r"\s+", " ", text)


def scaled_copy(source: Path, target: Path, factor) -> Path:
    """A copy of the results folder with every float of "results" multiplied."""
    target.mkdir(parents=True, exist_ok=True)

    def scale(node):
        if isinstance(node, dict):
            return {k: scale(v) for k, v in node.items()}
        if isinstance(node, list):
            return [scale(v) for v in node]
        if isinstance(node, float) and math.isfinite(node):
            return node * factor()
        return node

    for path in sorted(source.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        record["results"] = scale(record["results"])
        (target / path.name).write_text(json.dumps(record), encoding="utf-8")
    return target


def scalings(folder: Path) -> list[Path]:
    """Copies of the results: every float x1.37, then two with a factor per float.

    A ratio of two stored figures survives a common factor, so the two other copies
    multiply each float by its own factor (between 1/4 and 1/1.3, or 1.3 and 4).
    """
    copies = [scaled_copy(RESULTS, folder / "uniform", lambda: 1.37)]
    for seed in (1, 2):
        rng = random.Random(seed)
        copies.append(scaled_copy(RESULTS, folder / f"random{seed}", lambda r=rng: (
            math.exp(r.choice((-1, 1)) * r.uniform(0.26, 1.39)))))
    return copies


def allowed_spans(rel: str, text: str) -> list[tuple[int, int, str]]:
    """Where on the page the ALLOWED words of rel are: (start, end, words)."""
    return [(m.start(), m.end(), words) for page_, words, _ in ALLOWED if page_ == rel
            for m in re.finditer(re.escape(words), text)]


def census(folder: Path) -> dict[str, dict]:
    """Per page: figures that follow the results (bound), allowed facts, the rest."""
    copies = scalings(folder)
    report = {}
    for path in pages():
        rel = path.relative_to(ROOT).as_posix()
        try:
            text = page_prose(path, RESULTS)
            others = [[f for f, _, _ in measured_figures(page_prose(path, c))]
                      for c in copies]
        except FigureError as exc:
            report[rel] = {"bound": 0, "allowed": [], "unbound": [], "error": str(exc)}
            continue
        base = measured_figures(text)
        spans = allowed_spans(rel, text)
        entry = {"bound": 0, "allowed": [], "unbound": []}
        for i, (figure, start, end) in enumerate(base):
            words = [w for a, b, w in spans if a <= start and end <= b]
            if any(len(o) != len(base) or o[i] != figure for o in others):
                entry["bound"] += 1
            elif words:
                entry["allowed"].append(words[0])
            else:
                entry["unbound"].append((figure, text[max(0, start - 60):end + 30]))
        if base:
            report[rel] = entry
    return report


def summary(report: dict[str, dict]) -> str:
    lines = [f"{'page':<42} bound allowed unbound"]
    for rel, e in report.items():
        lines.append(f"{rel:<42} {e['bound']:5d} {len(e['allowed']):7d} "
                     f"{len(e['unbound']):7d}" + ("  DOES NOT RENDER" if "error" in e
                                                  else ""))
    total = [sum(e["bound"] for e in report.values()),
             sum(len(e["allowed"]) for e in report.values()),
             sum(len(e["unbound"]) for e in report.values())]
    lines.append(f"{'total':<42} {total[0]:5d} {total[1]:7d} {total[2]:7d}")
    return "\n".join(lines)


@pytest.mark.parametrize("path", pages(), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_every_page_renders_from_the_stored_results(path):
    """A misspelled key fails here, by page (notebooks have no other page test)."""
    page_prose(path, RESULTS)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return census(tmp_path_factory.mktemp("scaled"))


def test_every_measured_figure_is_bound(report):
    typed = [f"  {rel}: {figure!r} in: ...{context}..."
             for rel, e in report.items() for figure, context in e["unbound"]]
    typed += [f"  {e['error']}" for e in report.values() if "error" in e]
    assert not typed, (
        "measured figures typed by hand (bind them with {{ fig(...) }} or "
        "{{ num(...) }}, or list a fact in ALLOWED with its reason):\n"
        + "\n".join(typed) + "\n\n" + summary(report))


def test_every_allowed_literal_is_still_on_its_page(report):
    gone = [f"  {rel}: {words!r} ({why})" for rel, words, why in ALLOWED
            if "error" not in report.get(rel, {})  # reported by the render test
            and words not in report.get(rel, {}).get("allowed", [])]
    assert not gone, ("allowed literals no longer on their page (or bound now): "
                      "drop them from ALLOWED\n" + "\n".join(gone))


def test_the_rule_finds_figures_in_prose_only():
    text = page("""\
        BLAS: 53 GFLOPS, 3.2 times ijk, 1,024 tokens/s, 12 µs, 4.7 s, 62%, 14× faster.
        From 37.3, 33.2 and
        32.4 ms; between 12.0 and 12.8 GB/s; 4.9 ns at stride 32 and 5.9 ns.

        A 4096 × 4096 matrix, 3 x n, pad with 1s, $1.702x$, `30 ms` in code.

        ```python
        print("41 GFLOPS")
        ```

        <!-- 7 ms -->
        """)
    found = [f for f, _, _ in measured_figures(re.sub(r"\s+", " ", prose(text)))]
    assert found == ["53 GFLOPS", "3.2 times", "1,024 tokens/s", "12 µs", "4.7 s",
                     "62%", "14×", "37.3 ms", "33.2 ms", "32.4 ms", "12.0 GB/s",
                     "12.8 GB/s", "4.9 ns", "5.9 ns"]


# --- `make bench` then `make build`: the pages follow the results --------------

BINDING_PAGE = page("""\
    # Layout

    Random reads cost {{ fig("layout", "access.random_over_contiguous", ".3f") }}
    times contiguous ones.

    {{ measured("layout") }}
    """)


FIG_CALL = re.compile(r"""fig\(\s*"layout",\s*"([^"]+)",\s*"([^"]*)"\s*\)""")


def test_bench_then_build_updates_the_pages(tmp_path):
    """A quick benchmark writes to $MINIGPT_RESULTS; the pages render its figures."""
    for path in RESULTS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    env = {**os.environ, figures.RESULTS_ENV: str(tmp_path), "MPLBACKEND": "Agg"}
    subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "layout"], cwd=ROOT,
                   env=env, check=True, capture_output=True, timeout=600)
    record = json.loads((tmp_path / "layout.json").read_text())
    assert record != json.loads((RESULTS / "layout.json").read_text())
    ratio = record["results"]["access"]["random_over_contiguous"]
    out = render_markdown(BINDING_PAGE, "docs/p.md", ROOT, tmp_path)
    assert f"Random reads cost {ratio:.3f}\ntimes" in out
    assert record["date"][:10] in out
    # the book's own pages: every fig("layout", key, format) shows the new value
    for path in pages():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py" or not FIG_CALL.search(text):
            continue
        rel = path.relative_to(ROOT).as_posix()
        out = render_markdown(text, rel, ROOT, tmp_path)
        for key, fmt in FIG_CALL.findall(text):
            value = format(lookup(record["results"], key), fmt)
            assert value in out, f"{rel}: {key} should read {value} after the run"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = census(Path(tmp))
    print(summary(result))
    for name, e in result.items():
        if "error" in e:
            print(f"  {e['error']}")
        for figure, context in e["unbound"]:
            print(f"  {name}: {figure!r}: {context[:90]}")
