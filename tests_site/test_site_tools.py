"""The site's hooks (tools/site_hooks.py), the load note of the measured box and the
phone-readable chart style, without a build or a browser."""

from __future__ import annotations

import json
import re

import pytest

from tools import figures, site_hooks

URLS = {4: "chapters/04-memory-layout/", 5: "chapters/05-matrix-multiplication/",
        6: "chapters/06-optimizing-matmul/"}


def test_chapter_mentions_in_prose_become_links():
    html = ('<p>See chapter 4 and Chapter 6, chapters 4 to 6; chapter 99 has no page; '
            '1.5 chapter</p><h2 id="x">Chapter 4</h2><p><code>chapter 4</code> '
            '<a href="y">chapter 4</a> <span class="arithmatex">chapter 4</span></p>')
    out = site_hooks.link_chapters(html, URLS, "chapters/05-matrix-multiplication/")
    assert '<a href="../04-memory-layout/">chapter 4</a>' in out
    assert '<a href="../06-optimizing-matmul/">Chapter 6</a>' in out
    assert ('chapters <a href="../04-memory-layout/">4</a> to '
            '<a href="../06-optimizing-matmul/">6</a>') in out
    assert "chapter 99 has" in out
    # headings, code, existing links and math are left alone
    assert '<h2 id="x">Chapter 4</h2>' in out
    assert "<code>chapter 4</code>" in out and '<a href="y">chapter 4</a>' in out
    assert '<span class="arithmatex">chapter 4</span>' in out


def test_a_page_does_not_link_to_itself():
    out = site_hooks.link_chapters("<p>In chapter 5 we</p>", URLS,
                                   "chapters/05-matrix-multiplication/")
    assert out == "<p>In chapter 5 we</p>"


GLOSSARY = """# Glossary

**Attention.** Weighted averages. (Chapter 11.)

**BPE (byte-pair encoding).** A tokenizer.

**Context window ($n_{ctx}$).** The most tokens.

**FLOP, GFLOPS.** Operations.
"""


def test_glossary_terms_get_anchors_and_first_uses_links():
    terms = site_hooks.glossary_terms(GLOSSARY)
    assert [(a, p) for _, a, p in terms] == [
        ("attention", ("Attention",)), ("bpe", ("BPE", "byte-pair encoding")),
        ("context-window", ("Context window",)), ("flop-gflops", ("FLOP", "GFLOPS"))]
    page = ('<p><strong>Context window (<span class="arithmatex">\\(n\\)</span>).'
            '</strong> x</p><p><strong>FLOP, GFLOPS.</strong> y</p>')
    anchored = site_hooks.anchor_glossary(page, terms)
    assert '<p id="context-window"><strong>' in anchored
    assert '<p id="flop-gflops"><strong>' in anchored
    text = ("<h1>Attention</h1><p>Self-attention is not attention; attention is. "
            "GFLOPS and FLOPs. A context window.</p>")
    out = site_hooks.link_glossary(text, terms, "appendix/glossary/", "chapters/x/")
    links = re.findall(r'href="([^"]+)"[^>]*>([^<]+)</a>', out)
    assert links == [("../../appendix/glossary/#attention", "attention"),
                     ("../../appendix/glossary/#flop-gflops", "GFLOPS"),
                     ("../../appendix/glossary/#context-window", "context window")]
    assert "<h1>Attention</h1>" in out and "Self-attention is not" in out


def test_unused_notebook_css_is_dropped_and_used_css_kept():
    css = (":root{--jp-x:1px}.used{color:red}.unused{color:blue}"
           ".used .unused,.used>p{margin:0}@media (max-width:9px){.unused{a:b}"
           ".used{c:d}}@keyframes spin{from{x:0}to{x:1}}")
    out = site_hooks.prune_css(css, {"used"})
    assert ":root{--jp-x:1px}" in out and ".used{color:red}" in out
    assert ".used>p{margin:0}" in out and ".unused" not in out
    assert "@media (max-width:9px){.used{c:d}}" in out and "@keyframes spin" in out


def test_mermaid_is_added_only_to_pages_with_a_diagram():
    class Page:
        url = "chapters/02-tensors/"

    head = ('<script src="../../assets/javascripts/bundle.1.min.js"></script>'
            '<script src="../../x.js"></script></body>')
    plain = site_hooks.on_post_page("<p>no diagram</p>" + head, Page(), {})
    assert "mermaid" not in plain
    drawn = site_hooks.on_post_page('<pre class="mermaid">x</pre>' + head, Page(), {})
    assert ('import mermaid from "../../assets/vendor/mermaid/mermaid.esm.min.mjs"'
            in drawn)
    assert drawn.index("mermaid.esm") < drawn.index('src="../../x.js"')

    class Home:
        url = ""

    home = site_hooks.on_post_page('<pre class="mermaid">x</pre>' + head, Home(), {})
    assert 'from "./assets/vendor/mermaid/mermaid.esm.min.mjs"' in home


@pytest.mark.parametrize("load, verdict", [
    (None, "unknown"),
    ({"before": [0.3, 0.2, 0.1], "after": [0.6, 0.3, 0.2], "cores": 2}, "quiet"),
    ({"before": [0.3, 0.2, 0.1], "after": [1.6, 0.3, 0.2], "cores": 2}, "busy"),
    ({"before": None, "after": [1.2, 1.0, 1.0], "cores": 2}, "busy"),
])
def test_the_measured_box_says_how_busy_the_machine_was(load, verdict):
    record = {"machine": {"cores": 2}, **({"load": load} if load else {})}
    assert figures.load_verdict(record)[0] == verdict


def test_a_busy_result_fails_the_build_when_quiet_is_required(tmp_path, monkeypatch):
    record = {"topic": "t", "date": "2026-12-01T00:00:00+00:00", "command": "c",
              "machine": {"cpu": "x", "cores": 2, "python": "3", "numpy": "2",
                          "blas": "b"},
              "load": {"before": [1.9, 1, 1], "after": [1.8, 1, 1], "cores": 2},
              "results": {}}
    (tmp_path / "t.json").write_text(json.dumps(record))
    box = figures.Figures("docs/x.md", tmp_path).measured("t")
    assert "measured while the machine was busy (load average 1.90 and 1.80" in box
    monkeypatch.setenv(figures.QUIET_ENV, "1")
    with pytest.raises(figures.FigureError, match="t.json was measured while"):
        figures.Figures("docs/x.md", tmp_path).measured("t")


def test_results_record_the_load_before_and_after(tmp_path, monkeypatch):
    from benchmarks import common

    monkeypatch.setenv("MINIGPT_RESULTS", str(tmp_path))
    common.start_run()
    record = json.loads(common.save_results("t", {"x": 1}).read_text())
    assert set(record["load"]) == {"before", "after", "cores"}
    assert len(record["load"]["after"]) == 3 and record["load"]["cores"] >= 1


def test_saved_charts_have_text_readable_on_a_phone(tmp_path):
    from benchmarks import common

    plt = common.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    a.plot([1, 2], [3, 4], label="one")
    a.legend(fontsize=6)
    b.set_title("two", fontsize=6)
    fig.text(0.01, 0.01, "a footer " * 8, fontsize=5)
    fig.savefig(tmp_path / "c.svg", format="svg")
    plt.close(fig)
    svg = (tmp_path / "c.svg").read_text()
    width = float(re.search(r'width="([\d.]+)pt"', svg).group(1))
    smallest = min(float(s) * 100 for s in re.findall(r"scale\(([\d.]+) -", svg))
    assert width <= common.CHART_WIDTH_IN * 72 + 1
    assert smallest * common.PHONE_COLUMN_PX / width >= common.MIN_TEXT_PX - 0.05


def test_a_notebook_page_links_to_pages_not_to_their_sources():
    class File:
        def __init__(self, src_uri, url):
            self.src_uri, self.url = src_uri, url

        def is_documentation_page(self):
            return True

    class Files:
        table = {"chapters/20-kv-cache.md": File("chapters/20-kv-cache.md",
                                                 "chapters/20-kv-cache/")}

        def get_file_from_path(self, path):
            return self.table.get(path)

    class Page:
        file = File("chapters/21-performance.py", "chapters/21-performance/")
        url = "chapters/21-performance/"

    html = ('<a href="20-kv-cache.md#cache">c</a> <a href="99-none.md">n</a> '
            '<a href="https://x.org/a.md">x</a>')
    out = site_hooks.resolve_page_links(html, Page(), Files())
    assert '<a href="../20-kv-cache/#cache">c</a>' in out
    assert '<a href="99-none.md">n</a>' in out and 'href="https://x.org/a.md"' in out
