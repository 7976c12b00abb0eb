"""The chapter budget: counted as the site shows a page, enforced on every chapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.budget import MAX_PYTHON_LINES, MAX_WORDS, html_size, page_size

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "docs" / "chapters").glob("[0-9][0-9]-*.*"))


@pytest.mark.parametrize("page", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_is_within_the_budget(page):
    size = page_size(page)
    assert not size.over(), f"docs/chapters/{page.name}: " + "; ".join(size.over())


def test_prose_and_code_are_counted_apart():
    html = """<h1>Title words<a class="headerlink">¶</a></h1>
    <p>Three more words and <code>inline</code> x<sup>2</sup>.</p>
    <div class="language-python highlight"><pre><code>a = 1

    b = 2</code></pre></div>
    <div class="language-text highlight"><pre><code>out put</code></pre></div>
    <div class="arithmatex">\\(e^x + y\\)</div>
    <details class="success"><p>solution prose</p>
    <div class="language-python highlight"><pre><code>hidden = 1</code></pre></div>
    </details>"""
    size = html_size(html)
    assert (size.words, size.python_lines) == (9, 2)


def test_past_the_budget_is_named():
    over = html_size("<p>" + "word " * (MAX_WORDS + 1) + "</p>").over()
    assert over == [f"{MAX_WORDS + 1} words of prose (budget {MAX_WORDS})"]
    code = "\n".join(f"x{i} = {i}" for i in range(MAX_PYTHON_LINES + 1))
    lines = html_size(f'<div class="language-python highlight"><pre>{code}</pre></div>')
    assert lines.python_lines == MAX_PYTHON_LINES + 1 and len(lines.over()) == 1
